//! The simulated network: byte pipes per connection, delivered in chunks of
//! any size, with faults injected frame by frame.

use std::collections::VecDeque;

use mdm_sync::server::{ConnId, ServerError};
use mdm_sync::wire::{self, frame, Down, ReportBody, Up};

use super::{Res, Sim};

/// Which way a frame travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Device to server.
    Up,
    /// Server to device.
    Down,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }
}

/// A fault applied to the next frame of one direction of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameFault {
    /// The frame arrives twice.
    Duplicate,
    /// Before the frame, an older one (`n` frames back in this direction,
    /// possibly from an earlier connection) arrives again.
    Stale(u8),
    /// One bit of the frame is flipped (bit index modulo the frame's length).
    FlipBit(u16),
}

/// One transport connection between a device and the server.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) key: u64,
    pub(crate) dev: usize,
    pub(crate) server: ConnId,
    pub(crate) up: VecDeque<u8>,
    pub(crate) down: VecDeque<u8>,
    pub(crate) dev_open: bool,
    pub(crate) srv_open: bool,
    /// The transport dies after this many more bytes (either way).
    pub(crate) cut_after: Option<usize>,
    /// Nothing gets through any more, not even a close.
    pub(crate) stalled: bool,
    /// Whether closing one end is seen by the server (false: half-open).
    pub(crate) tell_server: bool,
    /// Server output not yet split into frames.
    pub(crate) assembler: Vec<u8>,
}

/// Splits whole frames off the front of a well-formed stream.
pub(crate) fn split_frames(buf: &mut Vec<u8>) -> Res<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        if buf[..2] != frame::MAGIC {
            return Err(format!(
                "server output does not start with a frame: {buf:02x?}"
            ));
        }
        let total = usize::from(u16::from_le_bytes([buf[2], buf[3]])) + frame::OVERHEAD;
        if buf.len() < total {
            break;
        }
        out.push(buf.drain(..total).collect());
    }
    Ok(out)
}

/// A short description of a frame, for the trace.
pub(crate) fn describe(dir: Dir, frame: &[u8]) -> String {
    let payload = frame.get(4..frame.len().saturating_sub(4)).unwrap_or(&[]);
    match dir {
        Dir::Up => match wire::decode::<Up>(payload) {
            Ok(Up::Hello(h)) => format!(
                "Hello(last_task_seq {}, policy v{}, {:?})",
                h.last_task_seq, h.policy_version, h.trigger
            ),
            Ok(Up::Proof { .. }) => "Proof".into(),
            Ok(m) => format!("{m:?}"),
            Err(e) => format!("<{e:?}>"),
        },
        Dir::Down => match wire::decode::<Down>(payload) {
            Ok(Down::Challenge { .. }) => "Challenge".into(),
            Ok(Down::Policy(p)) => format!("Policy v{}", p.version),
            Ok(m) => format!("{m:?}"),
            Err(e) => format!("<{e:?}>"),
        },
    }
}

impl<const O: usize, const I: usize> Sim<O, I> {
    pub(crate) fn conn_index(&self, key: u64) -> Option<usize> {
        self.conns.iter().position(|c| c.key == key)
    }

    /// The connection device `d` has open, if any.
    pub(crate) fn dev_conn(&self, d: usize) -> Option<usize> {
        self.devs[d].conn.and_then(|key| self.conn_index(key))
    }

    /// The device asked for a transport: refuse it, or open it at both ends.
    pub(crate) fn connect(&mut self, d: usize) -> Res {
        let now = self.dev_now(d);
        let f = &mut self.devs[d].faults;
        if f.offline || f.refuse > 0 {
            f.refuse = f.refuse.saturating_sub(1);
            trace!(self, "dev{d}: connection refused");
            self.devs[d].engine.connect_failed(now);
            return Ok(());
        }
        let srv_now = self.srv_now();
        let server = match self.server.connection_opened(srv_now) {
            Ok(conn) => conn,
            Err(ServerError::Busy) => {
                self.devs[d].engine.connect_failed(now);
                return Ok(());
            }
            Err(e) => return Err(format!("connection_opened: {e:?}")),
        };
        self.next_conn += 1;
        let f = &mut self.devs[d].faults;
        let conn = Conn {
            key: self.next_conn,
            dev: d,
            server,
            up: VecDeque::new(),
            down: VecDeque::new(),
            dev_open: true,
            srv_open: true,
            cut_after: f.cut_after.take(),
            stalled: core::mem::take(&mut f.stall),
            tell_server: !core::mem::take(&mut f.half_open),
            assembler: Vec::new(),
        };
        let stalled = conn.stalled;
        trace!(self, "dev{d}: connected as {server:?} (key {})", conn.key);
        self.conns.push(conn);
        if stalled {
            let c = self.conns.len() - 1;
            self.conns[c].tell_server = false;
        }
        self.devs[d].conn = Some(self.next_conn);
        self.summary.connections += 1;
        self.devs[d].engine.connected(now);
        Ok(())
    }

    /// Queues one frame on connection `c`, applying the armed frame faults.
    pub(crate) fn send_frame(&mut self, c: usize, dir: Dir, frame: Vec<u8>) -> Res {
        let d = self.conns[c].dev;
        if dir == Dir::Up {
            let payload = &frame[4..frame.len() - 4];
            if let Ok(Up::Report {
                seq,
                body: ReportBody::Task { task, status },
            }) = wire::decode::<Up>(payload)
            {
                self.truth.report_sent(d, seq, task, status);
            }
        }
        if self.tracing {
            let what = describe(dir, &frame);
            let key = self.conns[c].key;
            trace!(self, "{dir:?} dev{d} conn {key}: {what}");
        }
        let mut mine = Vec::new();
        self.devs[d].faults.frames.retain_mut(|(fd, skip, fault)| {
            if *fd != dir {
                return true;
            }
            if *skip > 0 {
                *skip -= 1;
                return true;
            }
            mine.push(*fault);
            false
        });
        let mut out = vec![frame.clone()];
        for fault in mine {
            self.summary.frame_faults += 1;
            match fault {
                FrameFault::Duplicate => out.push(frame.clone()),
                FrameFault::Stale(back) => {
                    let key = self.conns[c].key;
                    let hist = &self.devs[d].history[dir.index()];
                    let Some((from, old)) = hist.iter().rev().nth(usize::from(back)).cloned()
                    else {
                        continue;
                    };
                    let when = if from == key {
                        ""
                    } else {
                        " of an earlier connection"
                    };
                    trace!(self, "  fault: stale {}{when}", describe(dir, &old));
                    out.insert(0, old);
                }
                FrameFault::FlipBit(bit) => {
                    let bit = usize::from(bit) % (frame.len() * 8);
                    let last = out.len() - 1;
                    out[last][bit / 8] ^= 1 << (bit % 8);
                    trace!(self, "  fault: bit {bit} flipped");
                }
            }
        }
        let hist = &mut self.devs[d].history[dir.index()];
        if hist.len() == 64 {
            hist.pop_front();
        }
        hist.push_back((self.conns[c].key, frame));
        let pipe = match dir {
            Dir::Up => &mut self.conns[c].up,
            Dir::Down => &mut self.conns[c].down,
        };
        for f in out {
            pipe.extend(f);
        }
        Ok(())
    }

    /// Delivers one chunk on one connection chosen at random; `false` when no
    /// byte can move.
    pub(crate) fn deliver_one(&mut self) -> Res<bool> {
        let ready: Vec<(usize, Dir)> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.stalled)
            .flat_map(|(i, c)| {
                let up = (!c.up.is_empty() && c.srv_open).then_some((i, Dir::Up));
                let down = (!c.down.is_empty() && c.dev_open).then_some((i, Dir::Down));
                up.into_iter().chain(down)
            })
            .collect();
        if ready.is_empty() {
            return Ok(false);
        }
        let (c, dir) = ready[self.rng.next() as usize % ready.len()];
        let pending = match dir {
            Dir::Up => self.conns[c].up.len(),
            Dir::Down => self.conns[c].down.len(),
        };
        let mut n = self.rng.range(1, self.chunk_max as u64) as usize;
        n = n.min(pending);
        let mut cut = false;
        if let Some(left) = self.conns[c].cut_after {
            cut = n >= left;
            n = n.min(left);
            self.conns[c].cut_after = Some(left - n);
        }
        let pipe = match dir {
            Dir::Up => &mut self.conns[c].up,
            Dir::Down => &mut self.conns[c].down,
        };
        let chunk: Vec<u8> = pipe.drain(..n).collect();
        if !chunk.is_empty() {
            self.feed(c, dir, &chunk)?;
        }
        if cut {
            let key = self.conns[c].key;
            trace!(self, "conn {key}: transport cut");
            self.cut_conn(c, true)?;
        }
        Ok(true)
    }

    fn feed(&mut self, c: usize, dir: Dir, chunk: &[u8]) -> Res {
        let d = self.conns[c].dev;
        match dir {
            Dir::Up => {
                let now = self.srv_now();
                let conn = self.conns[c].server;
                match self.server.handle_bytes(conn, chunk, now) {
                    Ok(()) | Err(ServerError::UnknownConnection) | Err(ServerError::Peer(_)) => {}
                    Err(e) => return Err(format!("server handle_bytes: {e:?}")),
                }
                self.drain_server_events()?;
            }
            Dir::Down => {
                let now = self.dev_now(d);
                if self.devs[d].conn != Some(self.conns[c].key) {
                    return Ok(()); // an old transport the device gave up
                }
                let result = self.devs[d].engine.handle_bytes(chunk, now);
                if let Err(e) = result {
                    trace!(self, "dev{d}: handle_bytes: {e:?}");
                }
            }
        }
        Ok(())
    }

    /// Kills device `d`'s transport at once (reboot, going offline); the
    /// engine hears of it if `tell_device` (not when it is about to be replaced).
    pub(crate) fn cut_device(&mut self, d: usize, tell_server: bool, tell_device: bool) -> Res {
        let Some(c) = self.dev_conn(d) else {
            return Ok(());
        };
        self.conns[c].tell_server &= tell_server;
        self.cut_conn(c, tell_device)
    }

    /// Kills a transport: pending bytes are lost and both ends learn of it
    /// (the server only if it would see the reset).
    pub(crate) fn cut_conn(&mut self, c: usize, tell_device: bool) -> Res {
        let d = self.conns[c].dev;
        let key = self.conns[c].key;
        self.conns[c].up.clear();
        self.conns[c].down.clear();
        if self.conns[c].dev_open {
            self.conns[c].dev_open = false;
            if self.devs[d].conn == Some(key) {
                self.devs[d].conn = None;
                if tell_device {
                    let now = self.dev_now(d);
                    self.devs[d].engine.disconnected(now);
                }
            }
        }
        if self.conns[c].srv_open && self.conns[c].tell_server && !self.conns[c].stalled {
            self.conns[c].srv_open = false;
            let now = self.srv_now();
            self.server.connection_closed(self.conns[c].server, now);
            self.drain_server_events()?;
        }
        Ok(())
    }

    /// Delivers closes: a side that closed is seen by the other once the bytes
    /// it sent before have arrived; connections closed at both ends go away.
    pub(crate) fn close_finished(&mut self) -> Res<bool> {
        let mut progress = false;
        for c in 0..self.conns.len() {
            let conn = &mut self.conns[c];
            if !conn.dev_open {
                progress |= !conn.down.is_empty();
                conn.down.clear();
            }
            if !conn.srv_open {
                progress |= !conn.up.is_empty();
                conn.up.clear();
            }
            if conn.stalled {
                continue;
            }
            let (d, key) = (conn.dev, conn.key);
            if !conn.srv_open && conn.dev_open && conn.down.is_empty() {
                conn.dev_open = false;
                progress = true;
                if self.devs[d].conn == Some(key) {
                    self.devs[d].conn = None;
                    let now = self.dev_now(d);
                    trace!(self, "dev{d}: server closed conn {key}");
                    self.devs[d].engine.disconnected(now);
                }
            }
            let now = self.srv_now();
            let conn = &mut self.conns[c];
            if !conn.dev_open && conn.srv_open && conn.up.is_empty() && conn.tell_server {
                conn.srv_open = false;
                progress = true;
                self.server.connection_closed(conn.server, now);
                self.drain_server_events()?;
            }
        }
        let before = self.conns.len();
        self.conns.retain(|c| c.dev_open || c.srv_open);
        Ok(progress || self.conns.len() != before)
    }
}
