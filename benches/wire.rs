//! The wire format: encode + decode of every message kind, bare (postcard
//! payload) and framed (magic, length, CRC-32), against serde_json on the same
//! messages and a memcpy of the frame bytes; and the streaming frame decoder
//! fed a recorded sync in 1-byte, 64-byte and whole-buffer chunks.

mod common;

use core::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use mdm_sync::wire::{self, frame, Down, FrameDecoder, Up, MAX_FRAME};

/// Consumes a decoded message where it was decoded, as a caller that matches
/// on it does. Returning it from the measured closure instead would move it
/// into criterion's `black_box`: a copy of the whole type (280 bytes for a
/// `Down`, the size of a policy) right after the decoder's narrow stores,
/// which stalls on store forwarding and took about two thirds of the time
/// of decoding an 8-byte task. Every codec here, JSON too, is consumed so.
#[inline(always)]
fn consume<T, E: core::fmt::Debug>(decoded: Result<T, E>) {
    black_box(&decoded);
    assert!(decoded.is_ok(), "{:?}", decoded.err());
}

fn encode_decode<T>(c: &mut Criterion, name: &str, msg: &T)
where
    T: wire::Encode + wire::Decode + PartialEq + core::fmt::Debug,
{
    let mut g = c.benchmark_group(format!("wire/{name}"));
    let mut buf = [0u8; MAX_FRAME];
    let bare = wire::encode_payload(msg, &mut buf).unwrap();
    let framed = frame::encode(msg, &mut buf).unwrap();
    let json = serde_json::to_vec(msg).unwrap();
    assert_eq!(&serde_json::from_slice::<T>(&json).unwrap(), msg);
    g.throughput(Throughput::Elements(1));

    g.bench_function(BenchmarkId::new("postcard", bare), |b| {
        let mut buf = [0u8; MAX_FRAME];
        b.iter(|| {
            let n = wire::encode_payload(black_box(msg), &mut buf).unwrap();
            consume(wire::decode::<T>(black_box(&buf[..n])))
        })
    });
    g.bench_function(BenchmarkId::new("framed", framed), |b| {
        let mut buf = [0u8; MAX_FRAME];
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        b.iter(|| {
            let n = frame::encode(black_box(msg), &mut buf).unwrap();
            dec.push(black_box(&buf[..n]));
            let payload = dec.decode().unwrap().unwrap();
            consume(wire::decode::<T>(payload))
        })
    });
    g.bench_function(BenchmarkId::new("json", json.len()), |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            serde_json::to_writer(&mut out, black_box(msg)).unwrap();
            consume(serde_json::from_slice::<T>(black_box(&out)))
        })
    });
    g.bench_function(BenchmarkId::new("memcpy_frame", framed), |b| {
        let src = buf;
        let mut dst = [0u8; MAX_FRAME];
        b.iter(|| {
            dst[..framed].copy_from_slice(black_box(&src[..framed]));
            black_box(&dst);
        })
    });
    g.finish();
}

/// Encode only and decode only, for the task message of the goals.
fn task_halves(c: &mut Criterion) {
    let msg = common::sample_task();
    let mut g = c.benchmark_group("wire/down_task_halves");
    let mut buf = [0u8; MAX_FRAME];
    g.bench_function("postcard_encode", |b| {
        b.iter(|| wire::encode_payload(black_box(&msg), &mut buf).unwrap())
    });
    let n = wire::encode_payload(&msg, &mut buf).unwrap();
    let bare = buf;
    g.bench_function("postcard_decode", |b| {
        b.iter(|| consume(wire::decode::<Down>(black_box(&bare[..n]))))
    });
    g.bench_function("frame_encode", |b| {
        b.iter(|| frame::encode(black_box(&msg), &mut buf).unwrap())
    });
    let n = frame::encode(&msg, &mut buf).unwrap();
    let framed = buf;
    g.bench_function("frame_decode", |b| {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        b.iter(|| {
            dec.push(black_box(&framed[..n]));
            let payload = dec.decode().unwrap().unwrap();
            consume(wire::decode::<Down>(payload))
        })
    });
    g.bench_function("crc32", |b| {
        b.iter(|| wire::crc32(black_box(&framed[2..n - 4])))
    });
    g.finish();
}

fn messages(c: &mut Criterion) {
    for (name, msg) in common::down_messages() {
        encode_decode::<Down>(c, name, &msg);
    }
    for (name, msg) in common::up_messages() {
        encode_decode::<Up>(c, name, &msg);
    }
}

/// Decodes every message of a recorded stream fed in `chunk`-byte pieces;
/// returns how many there were.
fn stream_decode<T: wire::Decode>(stream: &[u8], chunk: usize, key: u32) -> usize {
    let mut count = 0;
    common::for_each_payload(stream, chunk, key, |p| {
        consume(wire::decode::<T>(p));
        count += 1;
    });
    count
}

fn streaming(c: &mut Criterion) {
    let common::Recorded { up, down, key } = common::recorded_sync();
    let frames_up = common::payloads(&up, key).len();
    let frames_down = common::payloads(&down, key).len();
    let mut g = c.benchmark_group("stream");
    for chunk in [1, 64, usize::MAX] {
        let label = if chunk == usize::MAX {
            "whole".to_string()
        } else {
            chunk.to_string()
        };
        g.throughput(Throughput::Bytes(down.len() as u64));
        g.bench_function(BenchmarkId::new("down_sync", &label), |b| {
            b.iter(|| {
                let n = stream_decode::<Down>(black_box(&down), chunk, key);
                assert_eq!(n, frames_down)
            })
        });
        g.throughput(Throughput::Bytes(up.len() as u64));
        g.bench_function(BenchmarkId::new("up_sync", &label), |b| {
            b.iter(|| assert_eq!(stream_decode::<Up>(black_box(&up), chunk, key), frames_up))
        });
    }
    g.finish();
}

criterion_group!(benches, messages, task_halves, streaming);
criterion_main!(benches);
