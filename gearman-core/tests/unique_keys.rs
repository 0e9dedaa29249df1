//! Tier 1: `new_unique_key` never repeats within a thread, across threads,
//! or across a fork (a preloaded library's backends are forked from one
//! postmaster: a generator state copied by fork must not repeat the
//! parent's keys).

use gearman_core::{new_unique_key, new_unique_key_in};
use std::collections::HashSet;

#[test]
fn keys_are_uuid_v4_and_distinct_across_threads() {
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| (0..50_000).map(|_| new_unique_key()).collect::<Vec<_>>()))
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for k in t.join().unwrap() {
            assert_eq!(k.len(), 36, "{k}");
            assert_eq!(&k[14..15], "4", "version 4: {k}");
            assert!(
                matches!(&k[19..20], "8" | "9" | "a" | "b"),
                "RFC 4122 variant: {k}"
            );
            assert!(all.insert(k.clone()), "repeated key {k}");
        }
    }
    assert_eq!(all.len(), 200_000);
}

#[test]
fn a_forked_child_does_not_repeat_its_parents_keys() {
    child_and_parent_keys_differ(new_unique_key);
}

#[test]
fn with_the_process_id_given_a_forked_child_does_not_repeat_its_parents_keys() {
    // As a PostgreSQL backend calls it, with MyProcPid.
    // SAFETY: getpid(2) has no preconditions.
    child_and_parent_keys_differ(|| new_unique_key_in(unsafe { libc::getpid() } as u32));
}

fn child_and_parent_keys_differ(new_unique_key: fn() -> String) {
    // The parent's generator is initialised before the fork.
    let _ = new_unique_key();
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes a key, writes it and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let k = new_unique_key();
        // SAFETY: write(2) and _exit(2) in the child.
        unsafe {
            libc::write(fds[1], k.as_ptr().cast(), k.len());
            libc::_exit(0);
        }
    }
    let parent = new_unique_key();
    let mut buf = [0u8; 36];
    // SAFETY: read(2) into a 36-byte buffer; waitpid(2) of our child.
    let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    assert_eq!(n, 36);
    let child = String::from_utf8(buf.to_vec()).unwrap();
    assert_ne!(child, parent, "the child repeated the parent's next key");
}
