//! Tier 1: the codec against protocol.md section 13, byte for byte, plus
//! property tests (random chunking, arbitrary input).

use gearman_core::proto::{decode, encode, Decoded, Magic, Packet, PacketType, DEFAULT_MAX_PACKET};
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// (name, magic, type, args, hex) from protocol.md section 13.
/// (name, magic, type, args, hex).
type Vector = (
    &'static str,
    Magic,
    PacketType,
    Vec<&'static [u8]>,
    &'static str,
);

fn vectors() -> Vec<Vector> {
    use Magic::{Req, Res};
    use PacketType as T;
    vec![
        ("SUBMIT_JOB", Req, T::SubmitJob, vec![b"reverse", b"uniq-1", b"hello"],
         "00 52 45 51 00 00 00 07 00 00 00 14 72 65 76 65 72 73 65 00 75 6e 69 71 2d 31 00 68 65 6c 6c 6f"),
        ("SUBMIT_JOB empty unique", Req, T::SubmitJob, vec![b"reverse", b"", b"test"],
         "00 52 45 51 00 00 00 07 00 00 00 0d 72 65 76 65 72 73 65 00 00 74 65 73 74"),
        ("SUBMIT_JOB_BG", Req, T::SubmitJobBg, vec![b"reverse", b"uniq-1", b"hello"],
         "00 52 45 51 00 00 00 12 00 00 00 14 72 65 76 65 72 73 65 00 75 6e 69 71 2d 31 00 68 65 6c 6c 6f"),
        ("SUBMIT_JOB_EPOCH", Req, T::SubmitJobEpoch, vec![b"reverse", b"uniq-1", b"1700000000", b"hello"],
         "00 52 45 51 00 00 00 24 00 00 00 1f 72 65 76 65 72 73 65 00 75 6e 69 71 2d 31 00 31 37 30 30 30 30 30 30 30 30 00 68 65 6c 6c 6f"),
        ("SUBMIT_REDUCE_JOB", Req, T::SubmitReduceJob, vec![b"map", b"u", b"red", b"", b"data"],
         "00 52 45 51 00 00 00 25 00 00 00 0f 6d 61 70 00 75 00 72 65 64 00 00 64 61 74 61"),
        ("JOB_CREATED", Res, T::JobCreated, vec![b"H:host:1"],
         "00 52 45 53 00 00 00 08 00 00 00 08 48 3a 68 6f 73 74 3a 31"),
        ("CAN_DO", Req, T::CanDo, vec![b"reverse"],
         "00 52 45 51 00 00 00 01 00 00 00 07 72 65 76 65 72 73 65"),
        ("CAN_DO_TIMEOUT", Req, T::CanDoTimeout, vec![b"reverse", b"5000"],
         "00 52 45 51 00 00 00 17 00 00 00 0c 72 65 76 65 72 73 65 00 35 30 30 30"),
        ("PRE_SLEEP", Req, T::PreSleep, vec![], "00 52 45 51 00 00 00 04 00 00 00 00"),
        ("NOOP", Res, T::Noop, vec![], "00 52 45 53 00 00 00 06 00 00 00 00"),
        ("GRAB_JOB_UNIQ", Req, T::GrabJobUniq, vec![], "00 52 45 51 00 00 00 1e 00 00 00 00"),
        ("NO_JOB", Res, T::NoJob, vec![], "00 52 45 53 00 00 00 0a 00 00 00 00"),
        ("JOB_ASSIGN_UNIQ", Res, T::JobAssignUniq, vec![b"H:host:1", b"reverse", b"uniq-1", b"hello"],
         "00 52 45 53 00 00 00 1f 00 00 00 1d 48 3a 68 6f 73 74 3a 31 00 72 65 76 65 72 73 65 00 75 6e 69 71 2d 31 00 68 65 6c 6c 6f"),
        ("WORK_STATUS", Req, T::WorkStatus, vec![b"H:host:1", b"50", b"100"],
         "00 52 45 51 00 00 00 0c 00 00 00 0f 48 3a 68 6f 73 74 3a 31 00 35 30 00 31 30 30"),
        ("WORK_COMPLETE req", Req, T::WorkComplete, vec![b"H:host:1", b"olleh"],
         "00 52 45 51 00 00 00 0d 00 00 00 0e 48 3a 68 6f 73 74 3a 31 00 6f 6c 6c 65 68"),
        ("WORK_COMPLETE res", Res, T::WorkComplete, vec![b"H:host:1", b"olleh"],
         "00 52 45 53 00 00 00 0d 00 00 00 0e 48 3a 68 6f 73 74 3a 31 00 6f 6c 6c 65 68"),
        ("WORK_FAIL", Req, T::WorkFail, vec![b"H:host:1"],
         "00 52 45 51 00 00 00 0e 00 00 00 08 48 3a 68 6f 73 74 3a 31"),
        ("GET_STATUS", Req, T::GetStatus, vec![b"H:host:1"],
         "00 52 45 51 00 00 00 0f 00 00 00 08 48 3a 68 6f 73 74 3a 31"),
        ("STATUS_RES known", Res, T::StatusRes, vec![b"H:host:1", b"1", b"1", b"50", b"100"],
         "00 52 45 53 00 00 00 14 00 00 00 13 48 3a 68 6f 73 74 3a 31 00 31 00 31 00 35 30 00 31 30 30"),
        ("STATUS_RES unknown", Res, T::StatusRes, vec![b"H:host:1", b"0", b"0", b"0", b"0"],
         "00 52 45 53 00 00 00 14 00 00 00 10 48 3a 68 6f 73 74 3a 31 00 30 00 30 00 30 00 30"),
        ("GET_STATUS_UNIQUE", Req, T::GetStatusUnique, vec![b"uniq-1"],
         "00 52 45 51 00 00 00 29 00 00 00 06 75 6e 69 71 2d 31"),
        ("STATUS_RES_UNIQUE", Res, T::StatusResUnique, vec![b"uniq-1", b"0", b"0", b"0", b"0", b"0"],
         "00 52 45 53 00 00 00 2a 00 00 00 10 75 6e 69 71 2d 31 00 30 00 30 00 30 00 30 00 30"),
        ("JOB_ASSIGN_ALL", Res, T::JobAssignAll, vec![b"H:host:1", b"map", b"u", b"red", b"data"],
         "00 52 45 53 00 00 00 28 00 00 00 17 48 3a 68 6f 73 74 3a 31 00 6d 61 70 00 75 00 72 65 64 00 64 61 74 61"),
        ("WORK_EXCEPTION", Req, T::WorkException, vec![b"H:host:1", b"boom"],
         "00 52 45 51 00 00 00 19 00 00 00 0d 48 3a 68 6f 73 74 3a 31 00 62 6f 6f 6d"),
        ("WORK_DATA binary", Req, T::WorkData, vec![b"H:host:1", b"\x00\x00\x01"],
         "00 52 45 51 00 00 00 1c 00 00 00 0c 48 3a 68 6f 73 74 3a 31 00 00 00 01"),
        ("OPTION_REQ", Req, T::OptionReq, vec![b"exceptions"],
         "00 52 45 51 00 00 00 1a 00 00 00 0a 65 78 63 65 70 74 69 6f 6e 73"),
        ("OPTION_RES", Res, T::OptionRes, vec![b"exceptions"],
         "00 52 45 53 00 00 00 1b 00 00 00 0a 65 78 63 65 70 74 69 6f 6e 73"),
        ("ERROR queue full", Res, T::Error, vec![b"QUEUE_ERROR", b"Job queue is full"],
         "00 52 45 53 00 00 00 13 00 00 00 1d 51 55 45 55 45 5f 45 52 52 4f 52 00 4a 6f 62 20 71 75 65 75 65 20 69 73 20 66 75 6c 6c"),
        ("ECHO_REQ", Req, T::EchoReq, vec![b"ping"],
         "00 52 45 51 00 00 00 10 00 00 00 04 70 69 6e 67"),
        ("SET_CLIENT_ID", Req, T::SetClientId, vec![b"w1"],
         "00 52 45 51 00 00 00 16 00 00 00 02 77 31"),
    ]
}

#[test]
fn every_section_13_vector_encodes_and_decodes_byte_for_byte() {
    for (name, magic, kind, args, h) in vectors() {
        let want = hex(h);
        let mut out = Vec::new();
        encode(magic, kind, &args, &mut out).unwrap();
        assert_eq!(out, want, "encode {name}");
        match decode(&want, DEFAULT_MAX_PACKET).unwrap() {
            Decoded::Packet(p, used) => {
                assert_eq!(used, want.len(), "{name}");
                assert_eq!(p.magic, magic, "{name}");
                assert_eq!(p.kind, kind, "{name}");
                let got: Vec<&[u8]> = p.args.iter().map(|a| a.as_slice()).collect();
                assert_eq!(got, args, "decode {name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn work_fail_converted_from_exception_has_its_trailing_nul_stripped() {
    let raw = hex("00 52 45 53 00 00 00 0e 00 00 00 09 48 3a 68 6f 73 74 3a 31 00");
    let Decoded::Packet(p, _) = decode(&raw, DEFAULT_MAX_PACKET).unwrap() else {
        panic!()
    };
    assert_eq!(p.kind, PacketType::WorkFail);
    assert_eq!(p.args, vec![b"H:host:1".to_vec()]);
}

#[test]
fn decoder_edge_cases() {
    // Empty unique and empty data in a SUBMIT_JOB.
    let raw = hex("00 52 45 51 00 00 00 07 00 00 00 03 66 00 00");
    let Decoded::Packet(p, n) = decode(&raw, DEFAULT_MAX_PACKET).unwrap() else {
        panic!()
    };
    assert_eq!(
        (n, p.args.clone()),
        (15, vec![b"f".to_vec(), vec![], vec![]])
    );
    // JOB_ASSIGN_UNIQ whose data begins with NUL keeps it.
    let mut buf = Vec::new();
    encode(
        Magic::Res,
        PacketType::JobAssignUniq,
        &[b"H:1", b"f", b"u", b"\0\0x"],
        &mut buf,
    )
    .unwrap();
    let Decoded::Packet(p, _) = decode(&buf, DEFAULT_MAX_PACKET).unwrap() else {
        panic!()
    };
    assert_eq!(p.arg(3), b"\0\0x");
    // Two packets in one read.
    let mut two = hex("00 52 45 53 00 00 00 06 00 00 00 00");
    two.extend(hex("00 52 45 53 00 00 00 0a 00 00 00 00"));
    let Decoded::Packet(a, n) = decode(&two, DEFAULT_MAX_PACKET).unwrap() else {
        panic!()
    };
    let Decoded::Packet(b, _) = decode(&two[n..], DEFAULT_MAX_PACKET).unwrap() else {
        panic!()
    };
    assert_eq!((a.kind, b.kind), (PacketType::Noop, PacketType::NoJob));
    // 64 KiB and 16 MiB payloads, split byte-by-byte at the header.
    for size in [64 << 10, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i % 256) as u8).collect();
        let mut buf = Vec::new();
        encode(
            Magic::Res,
            PacketType::WorkComplete,
            &[b"H:x:1", &data],
            &mut buf,
        )
        .unwrap();
        for cut in 0..12 {
            assert!(matches!(
                decode(&buf[..cut], DEFAULT_MAX_PACKET).unwrap(),
                Decoded::NeedMore(_)
            ));
        }
        assert!(matches!(
            decode(&buf[..buf.len() - 1], DEFAULT_MAX_PACKET).unwrap(),
            Decoded::NeedMore(1)
        ));
        let Decoded::Packet(p, _) = decode(&buf, DEFAULT_MAX_PACKET).unwrap() else {
            panic!()
        };
        assert_eq!(p.arg(1), data.as_slice());
    }
}

#[test]
fn decoder_rejects_what_is_not_the_protocol() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("text", b"ERR UNKNOWN_COMMAND x\r\n".to_vec()),
        ("bad magic", hex("00 52 45 58 00 00 00 06 00 00 00 00")),
        ("bad magic early", hex("00 41")),
        ("type 0", hex("00 52 45 53 00 00 00 00 00 00 00 00")),
        ("type 5", hex("00 52 45 53 00 00 00 05 00 00 00 00")),
        ("type 43", hex("00 52 45 53 00 00 00 2b 00 00 00 00")),
        ("huge size", hex("00 52 45 53 00 00 00 0d ff ff ff ff")),
        (
            "missing NULs",
            hex("00 52 45 53 00 00 00 14 00 00 00 03 61 62 63"),
        ),
        (
            "payload on NOOP",
            hex("00 52 45 53 00 00 00 06 00 00 00 01 61"),
        ),
    ];
    for (name, raw) in cases {
        let e = decode(&raw, DEFAULT_MAX_PACKET).unwrap_err();
        assert_eq!(e.kind(), &gearman_core::ErrorKind::Protocol, "{name}: {e}");
    }
    // The limit is configurable.
    let mut buf = Vec::new();
    encode(Magic::Res, PacketType::EchoRes, &[&[0u8; 100]], &mut buf).unwrap();
    assert!(decode(&buf, 99).is_err());
    assert!(decode(&buf, 100).is_ok());
}

#[test]
fn encoder_rejects_nul_in_leading_fields_and_wrong_counts() {
    let mut out = Vec::new();
    assert!(encode(
        Magic::Req,
        PacketType::SubmitJob,
        &[b"a\0", b"", b""],
        &mut out
    )
    .is_err());
    assert!(encode(Magic::Req, PacketType::SubmitJob, &[b"a", b""], &mut out).is_err());
    assert!(out.is_empty(), "nothing appended on error");
}

fn any_type() -> impl Strategy<Value = PacketType> {
    (1u32..=42).prop_filter_map("type 5 is unused", PacketType::from_u32)
}

fn any_packet() -> impl Strategy<Value = Packet> {
    (any_type(), any::<bool>()).prop_flat_map(|(kind, req)| {
        let n = kind.field_count();
        let leading = proptest::collection::vec(
            proptest::collection::vec(1u8..=255, 0..20),
            n.saturating_sub(1),
        );
        let last = proptest::collection::vec(any::<u8>(), 0..300);
        (leading, last).prop_map(move |(mut args, last)| {
            if n > 0 {
                let mut last = last;
                // A server's handles, numbers and codes are bounded
                // (decode refuses longer ones): keep those in bounds.
                if !req
                    && matches!(
                        kind,
                        PacketType::JobCreated
                            | PacketType::WorkFail
                            | PacketType::OptionRes
                            | PacketType::StatusRes
                            | PacketType::StatusResUnique
                            | PacketType::WorkStatus
                    )
                {
                    last.truncate(63);
                }
                // Received handles lose trailing NULs: keep them out of
                // single-field handle packets so the round trip is exact.
                if !req && n == 1 {
                    while last.last() == Some(&0) {
                        last.pop();
                    }
                }
                args.push(last);
            }
            Packet {
                magic: if req { Magic::Req } else { Magic::Res },
                kind,
                args,
            }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_packets_round_trip_under_random_chunking(
        packets in proptest::collection::vec(any_packet(), 1..8),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let mut stream = Vec::new();
        for p in &packets {
            p.encode(&mut stream).unwrap();
        }
        // Feed the stream in random chunk sizes, decoding as a reader would.
        let mut got = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < stream.len() {
            let n = cuts[i % cuts.len()].min(stream.len() - pos);
            i += 1;
            buf.extend_from_slice(&stream[pos..pos + n]);
            pos += n;
            while let Decoded::Packet(p, used) = decode(&buf, DEFAULT_MAX_PACKET).unwrap() {
                got.push(p);
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, packets);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes, 1 << 16);
        let _ = gearman_core::proto::decode_line(&bytes);
        let _ = gearman_core::proto::decode_list(&bytes);
    }

    #[test]
    fn decoding_headers_with_a_valid_magic_never_panics(
        t in any::<u32>(), size in any::<u32>(), rest in proptest::collection::vec(any::<u8>(), 0..64), res in any::<bool>()
    ) {
        let mut b = if res { b"\0RES".to_vec() } else { b"\0REQ".to_vec() };
        b.extend_from_slice(&t.to_be_bytes());
        b.extend_from_slice(&size.to_be_bytes());
        b.extend_from_slice(&rest);
        let _ = decode(&b, DEFAULT_MAX_PACKET);
    }
}
