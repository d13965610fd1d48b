//! A serde serializer that writes the postcard encoding (PROTOCOL.md, section
//! 3) straight into a byte slice, byte for byte what `postcard` writes.
//!
//! Postcard goes through a flavor: every varint is built in a scratch buffer
//! and then extended into the output, one call per value. Here a varint is a
//! loop of pushes into the slice, and everything inlines into the derived
//! `Serialize` impls. Like the old `Counting` flavor it writes while `out` has
//! room and counts every byte, so one pass tells both the bytes and, when they
//! do not fit, how many are needed.

use core::fmt;

use serde::ser::{
    self, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant,
};

/// Writes into `out` as far as it fits; `len` counts every byte. Also used
/// directly, without serde, for the device snapshot.
pub(crate) struct Writer<'a> {
    pub(super) out: &'a mut [u8],
    pub(super) len: usize,
}

/// Sequences and maps of unknown length, which postcard cannot encode either.
#[derive(Debug)]
pub(crate) struct Unencodable;

impl fmt::Display for Unencodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not encodable as postcard")
    }
}

impl core::error::Error for Unencodable {}

impl ser::Error for Unencodable {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Unencodable
    }
}

type Res = Result<(), Unencodable>;

impl<'a> Writer<'a> {
    /// A writer at the start of `out`.
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Self { out, len: 0 }
    }

    /// Bytes written, or that would have been with room enough.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg_attr(feature = "std", inline)]
    #[cfg_attr(not(feature = "std"), inline(never))]
    pub(crate) fn push(&mut self, byte: u8) {
        if let Some(slot) = self.out.get_mut(self.len) {
            *slot = byte;
        }
        self.len += 1;
    }

    #[inline]
    pub(super) fn bytes(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        match self.out.get_mut(self.len..end) {
            // A loop, not `copy_from_slice`: these are a few bytes, and a
            // call to `memcpy` costs more than copying them.
            Some(dst) => dst.iter_mut().zip(bytes).for_each(|(d, s)| *d = *s),
            None => bytes.iter().for_each(|&b| self.push(b)),
        }
        self.len = end;
    }

    /// LEB128: seven bits a byte, least significant first.
    #[cfg_attr(feature = "std", inline)]
    #[cfg_attr(not(feature = "std"), inline(never))]
    pub(crate) fn varint(&mut self, mut v: u64) {
        loop {
            let low = v as u8 & 0x7F;
            v >>= 7;
            if v == 0 {
                return self.push(low);
            }
            self.push(low | 0x80);
        }
    }

    fn varint128(&mut self, mut v: u128) {
        while v >= 0x80 {
            self.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.push(v as u8);
    }

    /// [`len_prefixed`](Self::len_prefixed) of `array[..len]` (all of it if
    /// `len > N`). Where the whole array fits, it is copied whole, a
    /// fixed-size copy that needs no call to `memcpy`: the bytes after `len`
    /// are then overwritten by whatever is written next, or left past the end
    /// as scratch.
    #[inline]
    pub(crate) fn len_prefixed_of<const N: usize>(&mut self, array: &[u8; N], len: usize) {
        let len = len.min(N);
        self.varint(len as u64);
        match self
            .out
            .get_mut(self.len..)
            .and_then(|s| s.first_chunk_mut::<N>())
        {
            Some(dst) => {
                *dst = *array;
                self.len += len;
            }
            None => self.bytes(array.get(..len).unwrap_or_default()),
        }
    }

    pub(crate) fn len_prefixed(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.bytes(bytes);
    }
}

/// Where a [`Piece`] writes: a [`Writer`] (any length, every byte checked)
/// or, with `hand-encode`, a [`Chunk`] of output known to be long enough.
pub(crate) trait Out {
    fn push(&mut self, byte: u8);
    /// A varint of up to ten bytes (the pieces written by hand: servers and
    /// phones only; firmware's one piece, the snapshot, has no varints).
    #[cfg(feature = "hand-encode")]
    fn varint(&mut self, v: u64);
    /// A varint of a `u32` (up to five bytes).
    #[cfg(feature = "hand-encode")]
    fn varint32(&mut self, v: u32);
    /// See [`Writer::len_prefixed_of`].
    fn len_prefixed_of<const N: usize>(&mut self, array: &[u8; N], len: usize);
    /// `N` bytes as they are (a fixed-width integer's little-endian bytes).
    fn fixed<const N: usize>(&mut self, bytes: [u8; N]);
    /// `array[..len]` (the whole array when `len` is past it), bytes written
    /// before (see [`Chunk`]'s whole copy).
    #[cfg(feature = "hand-encode")]
    fn array<const N: usize>(&mut self, array: &[u8; N], len: usize);
}

/// A run of writes of at most a known number of bytes (see [`Writer::piece`]).
pub(crate) trait Piece {
    fn write<O: Out>(&self, out: &mut O);
}

impl Out for Writer<'_> {
    #[inline(always)]
    fn push(&mut self, byte: u8) {
        Writer::push(self, byte);
    }
    #[cfg(feature = "hand-encode")]
    #[inline(always)]
    fn varint(&mut self, v: u64) {
        Writer::varint(self, v);
    }
    #[cfg(feature = "hand-encode")]
    #[inline(always)]
    fn varint32(&mut self, v: u32) {
        Writer::varint(self, v.into());
    }
    #[inline(always)]
    fn len_prefixed_of<const N: usize>(&mut self, array: &[u8; N], len: usize) {
        Writer::len_prefixed_of(self, array, len);
    }
    #[inline(always)]
    fn fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        self.bytes(&bytes);
    }
    #[cfg(feature = "hand-encode")]
    #[inline(always)]
    fn array<const N: usize>(&mut self, array: &[u8; N], len: usize) {
        self.bytes(array.get(..len).unwrap_or(array));
    }
}

impl Writer<'_> {
    /// Writes `piece`, which is at most `K` bytes. With `hand-encode`, when
    /// the next `K` bytes of `out` are there, through a [`Chunk`] of them:
    /// its writes are unrolled at constant offsets, with no check per byte
    /// (the compiler proves them in bounds). Else, or if the piece turned out
    /// longer than `K` after all, through this writer.
    #[inline(always)]
    pub(crate) fn piece<const K: usize, P: Piece>(&mut self, piece: &P) {
        #[cfg(feature = "hand-encode")]
        if let Some(out) = self
            .out
            .get_mut(self.len..)
            .and_then(|s| s.first_chunk_mut::<K>())
        {
            let mut chunk = Chunk { out, len: 0 };
            piece.write(&mut chunk);
            if chunk.len <= K {
                self.len += chunk.len;
                return;
            }
        }
        piece.write(self);
    }
}

/// `K` bytes of output, written from the start; `len` is past `K` once a
/// write did not fit (then the piece is written again through a `Writer`).
/// Each write needs the room of its longest case (ten bytes for a `u64`
/// varint) even when shorter: size `K` for that.
#[cfg(feature = "hand-encode")]
pub(crate) struct Chunk<'a, const K: usize> {
    out: &'a mut [u8; K],
    len: usize,
}

#[cfg(feature = "hand-encode")]
impl<const K: usize> Chunk<'_, K> {
    /// The next `M` bytes, or `None` (and the chunk marked overflowed).
    #[inline(always)]
    fn room<const M: usize>(&mut self) -> Option<&mut [u8; M]> {
        let room = self
            .out
            .get_mut(self.len..)
            .and_then(|s| s.first_chunk_mut::<M>());
        if room.is_none() {
            self.len = K + 1;
        }
        room
    }
}

#[cfg(feature = "hand-encode")]
impl<const K: usize> Out for Chunk<'_, K> {
    #[inline(always)]
    fn push(&mut self, byte: u8) {
        if let Some([slot]) = self.room::<1>() {
            *slot = byte;
            self.len += 1;
        }
    }
    #[inline(always)]
    fn varint(&mut self, v: u64) {
        if let Some(c) = self.room::<10>() {
            self.len += unrolled_varint(c, v);
        }
    }
    #[inline(always)]
    fn varint32(&mut self, v: u32) {
        if let Some(c) = self.room::<5>() {
            self.len += unrolled_varint(c, v.into());
        }
    }
    #[inline(always)]
    fn len_prefixed_of<const N: usize>(&mut self, array: &[u8; N], len: usize) {
        let len = len.min(N);
        self.varint(len as u64);
        if let Some(dst) = self.room::<N>() {
            *dst = *array;
            self.len += len;
        }
    }
    #[inline(always)]
    fn fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        if let Some(dst) = self.room::<N>() {
            *dst = bytes;
            self.len += N;
        }
    }
    #[inline(always)]
    fn array<const N: usize>(&mut self, array: &[u8; N], len: usize) {
        if let Some(dst) = self.room::<N>() {
            *dst = *array;
            self.len += len.min(N);
        }
    }
}

/// `v` as a varint at the start of `c`, which holds the longest one of its
/// type; returns its length. Unrolled by the compiler (`N` is a constant):
/// the indexes are constants, so there is no bounds check per byte.
#[cfg(feature = "hand-encode")]
#[inline(always)]
fn unrolled_varint<const N: usize>(c: &mut [u8; N], mut v: u64) -> usize {
    let mut i = 0;
    while i + 1 < N {
        if v < 0x80 {
            c[i] = v as u8;
            return i + 1;
        }
        c[i] = v as u8 | 0x80;
        v >>= 7;
        i += 1;
    }
    c[N - 1] = v as u8;
    N
}

/// Counts the bytes of a `Display`, then writes them.
impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

struct CountDisplay(usize);

impl fmt::Write for CountDisplay {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

impl ser::Serializer for &mut Writer<'_> {
    type Ok = ();
    type Error = Unencodable;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Res {
        self.push(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Res {
        self.push(v as u8);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Res {
        self.varint(zigzag(v.into()));
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Res {
        self.varint(zigzag(v.into()));
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Res {
        self.varint(zigzag(v));
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Res {
        self.varint128(((v << 1) ^ (v >> 127)) as u128);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Res {
        self.push(v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Res {
        self.varint(v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Res {
        self.varint(v.into());
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Res {
        self.varint(v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Res {
        self.varint128(v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Res {
        self.bytes(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Res {
        self.bytes(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Res {
        let mut buf = [0u8; 4];
        self.len_prefixed(v.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Res {
        self.len_prefixed(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Res {
        self.len_prefixed(v);
        Ok(())
    }
    fn serialize_none(self) -> Res {
        self.push(0);
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Res {
        self.push(1);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Res {
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Res {
        Ok(())
    }
    fn serialize_unit_variant(self, _name: &'static str, index: u32, _v: &'static str) -> Res {
        self.varint(index.into());
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Res {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Res {
        self.varint(index.into());
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Unencodable> {
        self.varint(len.ok_or(Unencodable)? as u64);
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self, Unencodable> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, Unencodable> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, Unencodable> {
        self.varint(index.into());
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self, Unencodable> {
        self.serialize_seq(len) // a length, then the entries
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, Unencodable> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, Unencodable> {
        // The tag, then the fields: the same as a tuple variant.
        self.serialize_tuple_variant(name, index, variant, len)
    }
    fn collect_str<T: ?Sized + fmt::Display>(self, value: &T) -> Res {
        let mut count = CountDisplay(0);
        fmt::write(&mut count, format_args!("{value}")).map_err(|_| Unencodable)?;
        self.varint(count.0 as u64);
        fmt::write(self, format_args!("{value}")).map_err(|_| Unencodable)
    }
}

/// Every compound is its elements one after the other, with nothing between
/// and nothing at the end: one impl body serves them all.
macro_rules! elements {
    ($($trait:ident :: $method:ident $(($key:ident))?),*) => {$(
        impl $trait for &mut Writer<'_> {
            type Ok = ();
            type Error = Unencodable;
            fn $method<T: ?Sized + Serialize>(
                &mut self,
                $($key: &'static str,)?
                value: &T,
            ) -> Res {
                value.serialize(&mut **self)
            }
            fn end(self) -> Res {
                Ok(())
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
    SerializeStruct::serialize_field(_key),
    SerializeStructVariant::serialize_field(_key)
);

impl SerializeMap for &mut Writer<'_> {
    type Ok = ();
    type Error = Unencodable;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Res {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Res {
        value.serialize(&mut **self)
    }
    fn end(self) -> Res {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::*;
    use proptest::prelude::*;

    /// What postcard writes for `msg`.
    fn postcard_bytes<T: Serialize>(msg: &T) -> heapless::Vec<u8, 1024> {
        let mut want = [0u8; 1024];
        let w = postcard::to_slice(msg, &mut want).unwrap().len();
        heapless::Vec::from_slice(&want[..w]).unwrap()
    }

    fn same<T: Serialize + fmt::Debug>(msg: &T) {
        let want = postcard_bytes(msg);
        let mut got = [0u8; 1024];
        let mut writer = Writer {
            out: &mut got,
            len: 0,
        };
        msg.serialize(&mut writer).unwrap();
        assert_eq!(writer.len, want.len(), "{msg:?}");
        assert_eq!(got[..want.len()], want[..], "{msg:?}");
    }

    /// `encode` into a buffer of every length short of the message: the
    /// whole length is counted and the part that fits is written.
    fn by_hand<T: Encode + fmt::Debug>(msg: &T) {
        let want = postcard_bytes(msg);
        let mut got = [0u8; 1024];
        assert_eq!(msg.encode(&mut got), want.len(), "{msg:?}");
        assert_eq!(got[..want.len()], want[..], "{msg:?}");
        for short in 0..want.len() {
            let mut got = [0u8; 1024];
            assert_eq!(msg.encode(&mut got[..short]), want.len(), "{msg:?}");
            assert_eq!(got[..short], want[..short], "{msg:?}");
        }
    }

    /// Values of every varint length, not mostly the longest.
    pub(crate) fn varied<T: From<u8> + core::ops::Shr<u32, Output = T> + Arbitrary>(
    ) -> impl Strategy<Value = T> {
        let bits = core::mem::size_of::<T>() as u32 * 8;
        (any::<T>(), 0..bits).prop_map(|(v, s)| v >> s)
    }

    /// Task statuses of every kind, with and without results.
    pub(crate) fn status() -> impl Strategy<Value = TaskStatus> {
        let result = prop_oneof![
            Just(None),
            (any::<i32>(), any::<i32>(), any::<u32>()).prop_map(|(a, b, c)| Some(
                TaskResult::Location {
                    lat_e7: a,
                    lon_e7: b,
                    accuracy_m: c
                }
            )),
            any::<u16>().prop_map(|t| Some(TaskResult::Scan { threats: t })),
        ];
        prop_oneof![
            Just(TaskStatus::Received),
            result.prop_map(|result| TaskStatus::Succeeded { result }),
            any::<u16>().prop_map(|reason| TaskStatus::Failed { reason }),
            proptest::option::of(any::<u32>())
                .prop_map(|retry_after_s| TaskStatus::Deferred { retry_after_s }),
            Just(TaskStatus::Cancelled),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn writes_what_postcard_writes(
            a in varied::<u64>(), b in varied::<u32>(), c in varied::<u16>(), d in any::<i64>(),
            e in any::<i32>(), f in any::<u8>(), g in any::<bool>(), s in "\\PC{0,40}",
            n in 0usize..=MAX_SETTINGS, o in any::<Option<u32>>(),
            (x, y, z) in (any::<i128>(), any::<u128>(), any::<char>()),
            (p, q) in (any::<f32>(), any::<f64>()),
        ) {
            same(&(a, b, c, d, e, f, g, &*s, o, x, y));
            same(&(z, p, q, &[f, 1, 2][..]));
            let settings = (0..n).map(|k| Setting { key: c ^ k as u16, value: d >> k }).collect();
            same(&Down::Policy(Policy { version: b, settings }));
            same(&Down::Task(Task { seq: b, id: TaskId(a), kind: TaskKind::ALL[f as usize % 5] }));
            same(&Down::Error(ErrorCode::VersionMismatch { supported: c }));
            same(&Up::Report { seq: b, body: ReportBody::Task { task: TaskId(a), status:
                TaskStatus::Succeeded { result: Some(TaskResult::Location {
                    lat_e7: e, lon_e7: e.wrapping_neg(), accuracy_m: b }) } } });
            same(&Up::Progress { task: TaskId(a), percent: Some(f) });
            let token = heapless::String::try_from(&s[..s.len().min(PUSH_TOKEN_MAX)])
                .unwrap_or_default();
            same(&Up::Hello(Hello {
                version: c, attempt: a ^ 1, device: DeviceId(a), generation: b,
                platform: Platform::Ios,
                push_token: token, trigger: SyncTrigger::Manual, last_task_seq: b,
                policy_version: b / 2,
            }));
            same(&Up::Proof { mac: [f; 32] });
        }

        /// The hand-written encoders (and the serde fallback behind
        /// `Encode`) write what postcard writes, for every message kind.
        #[test]
        fn encodes_what_postcard_writes(
            seq in varied::<u32>(), id in varied::<u64>(), kind in 0usize..5,
            status in status(), percent in proptest::option::of(any::<u8>()),
            mac in any::<[u8; 32]>(), c in varied::<u16>(), b in any::<bool>(),
        ) {
            let task = TaskId(id);
            let downs = [
                Down::Challenge { version: c, attempt: id, nonce: *mac.first_chunk().unwrap() },
                Down::Welcome { ack: seq, periodic_s: seq / 3, want_token: seq % 2 == 1 },
                Down::Ack { seq },
                Down::Task(Task { seq, id: task, kind: TaskKind::ALL[kind] }),
                Down::Cancel { task },
                Down::Policy(Policy { version: seq, settings: heapless::Vec::new() }),
                Down::SyncEnd,
                Down::Error(ErrorCode::VersionMismatch { supported: c }),
            ];
            for msg in &downs {
                by_hand(msg);
            }
            // A status alone (as a device replaces a `Received` with it), with
            // room for a chunk and without.
            #[cfg(feature = "hand-encode")]
            for size in [postcard_bytes(&status).len(), 64] {
                let mut got = [0u8; 64];
                let n = super::super::encode_task_status(&status, &mut got[..size]);
                prop_assert_eq!(&got[..n], &postcard_bytes(&status)[..]);
            }
            let failed = heapless::Vec::from_slice(&[SettingFailure { key: c, reason: c }])
                .unwrap();
            let bodies = [
                ReportBody::Task { task, status },
                ReportBody::Compliance(ComplianceEvent::UsbDebugging { enabled: b }),
                ReportBody::Policy(PolicyReport {
                    version: seq,
                    outcome: PolicyOutcome::Partial { failed },
                }),
            ];
            for body in bodies {
                by_hand(&body);
                let mut bytes = [0u8; MAX_REPORT_BODY];
                let n = body.encode(&mut bytes);
                let report = Up::Report { seq, body };
                by_hand(&report);
                let want = postcard_bytes(&report);
                let mut got = [0u8; 64];
                let encoded = EncodedReport { seq, body: &bytes, len: n };
                let len = encoded.encode(&mut got);
                prop_assert_eq!(&got[..len], &want[..]);
            }
            let hello = Hello {
                version: c, attempt: id / 3, device: DeviceId(id), generation: seq,
                platform: Platform::Android,
                push_token: heapless::String::new(), trigger: SyncTrigger::Push,
                last_task_seq: seq, policy_version: seq,
            };
            for msg in [Up::Hello(hello), Up::Proof { mac }, Up::Progress { task, percent }] {
                by_hand(&msg);
            }
        }

        /// A piece written through a chunk (room enough, or too little so
        /// that it is written again through the writer) is what the writer
        /// alone writes, into output of every length.
        #[test]
        fn pieces_write_what_the_writer_writes(
            a in varied::<u64>(), b in varied::<u32>(), body in any::<[u8; 8]>(),
            len in 0usize..10,
        ) {
            struct P(u64, u32, [u8; 8], usize);
            impl Piece for P {
                fn write<O: Out>(&self, o: &mut O) {
                    o.push(7);
                    #[cfg(feature = "hand-encode")]
                    {
                        o.varint(self.0);
                        o.varint32(self.1);
                    }
                    o.fixed(self.0.to_le_bytes());
                    o.fixed(self.1.to_le_bytes());
                    o.len_prefixed_of(&self.2, self.3);
                }
            }
            let p = P(a, b, body, len);
            let mut want = [1u8; 96];
            let mut w = Writer::new(&mut want[1..]);
            p.write(&mut w);
            let n = w.len();
            // n is at most 1 + 10 + 5 + 8 + 4 + 1 + 8 = 37: sizes go up to 77.
            for size in 0..=n + 40 {
                for fits in [true, false] {
                    let mut got = [0xEEu8; 96];
                    let mut w = Writer::new(&mut got[..size]);
                    w.push(1);
                    if fits {
                        w.piece::<48, _>(&p); // 1 + 10 + 5 + 8 + 4 + 10 + 8 at most
                    } else {
                        w.piece::<8, _>(&p);
                    }
                    prop_assert_eq!(w.len(), 1 + n);
                    let written = size.min(1 + n);
                    prop_assert_eq!(&got[..written], &want[..written]);
                }
            }
        }
    }

    /// A tag, then `array` of `len` bytes (see `Out::array`).
    #[cfg(feature = "hand-encode")]
    struct Tagged<'a, const N: usize>(&'a [u8; N], usize);

    #[cfg(feature = "hand-encode")]
    impl<const N: usize> Piece for Tagged<'_, N> {
        fn write<O: Out>(&self, w: &mut O) {
            w.push(0xA0);
            w.array(self.0, self.1);
        }
    }

    /// `array` writes the same bytes through a `Chunk` and through the
    /// `Writer` behind it, whatever the length asked (a length past the
    /// array gives the whole array, as `EncodedReport` reads its body).
    #[cfg(feature = "hand-encode")]
    #[test]
    fn array_is_the_same_through_a_chunk_and_the_writer() {
        let array = [1u8, 2, 3, 4];
        for len in [0, 1, 3, 4, 5, 200, usize::MAX] {
            let piece = Tagged(&array, len);
            let mut chunked = [0u8; 16];
            let mut w = Writer::new(&mut chunked);
            w.piece::<8, _>(&piece);
            let c = w.len();
            let mut plain = [0u8; 16];
            let mut w = Writer::new(&mut plain);
            piece.write(&mut w);
            let p = w.len();
            assert_eq!((c, &chunked[..c]), (p, &plain[..p]), "len {len}");
        }
    }

    /// `Down::Task` and `Down::Ack`, written as pieces, against postcard at
    /// every varint length boundary (each `2^(7k)` and one either side, and
    /// the largest values) and into output of every length up to past
    /// their room: the chunk and the writer paths, and every cut.
    #[test]
    fn task_and_ack_at_every_varint_boundary_and_output_length() {
        let edges = |bits: u32| {
            let max = u64::MAX >> (64 - bits);
            let mut v = std::vec![0, 1, max - 1, max];
            for k in 1..=bits / 7 {
                let b = 1u64 << (7 * k);
                v.extend([b - 1, b, b + 1].into_iter().filter(|x| *x <= max));
            }
            v
        };
        for seq in edges(32) {
            let seq = seq as u32;
            let mut msgs = std::vec![Down::Ack { seq }];
            for id in edges(64) {
                for kind in TaskKind::ALL {
                    msgs.push(Down::Task(Task {
                        seq,
                        id: TaskId(id),
                        kind,
                    }));
                }
            }
            for msg in &msgs {
                let want = postcard_bytes(msg);
                for size in (0..=24).chain([1024]) {
                    let mut got = [0xEEu8; 1024];
                    assert_eq!(
                        msg.encode(&mut got[..size]),
                        want.len(),
                        "{msg:?} in {size}"
                    );
                    let n = size.min(want.len());
                    assert_eq!(got[..n], want[..n], "{msg:?} in {size}");
                }
            }
        }
    }
}
