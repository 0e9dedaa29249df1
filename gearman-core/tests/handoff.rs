//! Tier 1: the job hand-off encoding (gearman_core::handoff) round-trips
//! any jobs and lists, and rejects every truncation of a record.

use gearman_core::handoff::{
    decode, decode_groups, encode_group, encode_group_text, encoded_len, parse_list,
};
use gearman_core::{Job, Priority, ServerList};
use proptest::prelude::*;

fn job() -> impl Strategy<Value = Job> {
    (
        proptest::collection::vec(any::<u8>(), 1..20),
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..63)),
        0u8..3,
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(function, workload, unique, p, epoch)| Job {
            function,
            workload,
            unique,
            priority: [Priority::High, Priority::Normal, Priority::Low][p as usize],
            epoch,
        })
}

fn list() -> impl Strategy<Value = ServerList> {
    prop_oneof![
        Just("127.0.0.1:4730"),
        Just("a.example:1,tls://b.example:4731"),
        Just("[::1]:7003"),
    ]
    .prop_map(|s| ServerList::parse(s).unwrap())
}

proptest! {
    #[test]
    fn groups_round_trip(groups in proptest::collection::vec(
        (list(), proptest::collection::vec(job(), 0..8)), 0..5))
    {
        let mut buf = Vec::new();
        for (l, jobs) in &groups {
            let before = buf.len();
            encode_group(&mut buf, l, jobs.iter());
            prop_assert_eq!(buf.len() - before, encoded_len(l.to_string().len(), jobs));
        }
        let back = decode(&buf).unwrap();
        prop_assert_eq!(&back, &groups);
        // The same record with the lists left as text, and encoded from
        // the lists' text.
        let raw = decode_groups(&buf).unwrap();
        prop_assert_eq!(raw.len(), groups.len());
        let mut again = Vec::new();
        for ((text, jobs), (l, want)) in raw.iter().zip(&groups) {
            prop_assert_eq!(&parse_list(text).unwrap(), l);
            prop_assert_eq!(jobs, want);
            encode_group_text(&mut again, text, jobs.iter());
        }
        prop_assert_eq!(again, buf);
    }

    #[test]
    fn every_truncation_is_an_error(jobs in proptest::collection::vec(job(), 1..4), cut in any::<prop::sample::Index>()) {
        let l = ServerList::parse("127.0.0.1:4730").unwrap();
        let mut buf = Vec::new();
        encode_group(&mut buf, &l, &jobs);
        let at = cut.index(buf.len());
        prop_assert!(decode(&buf[..at]).is_err() || at == 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
    }
}

#[test]
fn a_corrupt_length_is_reported_not_allocated() {
    // A group claiming u32::MAX jobs in a 12-byte record.
    let mut buf = Vec::new();
    buf.extend_from_slice(&14u32.to_le_bytes());
    buf.extend_from_slice(b"127.0.0.1:4730");
    buf.extend_from_slice(&u32::MAX.to_le_bytes());
    let e = decode(&buf).unwrap_err();
    assert!(e.to_string().contains("corrupt job hand-off record"), "{e}");
}

#[test]
fn a_list_that_does_not_parse_is_a_corrupt_record() {
    let j = Job::new("f", "w");
    let mut buf = Vec::new();
    encode_group_text(&mut buf, "no such:port:list", [&j]);
    // decode_groups leaves the list to the caller; parse_list refuses it.
    let groups = decode_groups(&buf).unwrap();
    assert_eq!(groups.len(), 1);
    let e = parse_list(groups[0].0).unwrap_err();
    assert!(e.to_string().contains("corrupt job hand-off record"), "{e}");
    assert!(decode(&buf).is_err());
}
