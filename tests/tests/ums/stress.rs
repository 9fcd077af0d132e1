//! Many containers created and deleted in a row leave nothing behind.

use std::time::Duration;

use ums_tests::{leaks, Containerd, Version};

use crate::common::*;

const N: usize = 20;

fn create_delete_loop(v: Version) {
    let c = Containerd::start("loop20", v);
    let ctr = c.ctr();
    let mut fps = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..N {
        let id = format!("l{i}");
        let svc = start_loop(&c, &ctr, &id);
        assert_nested_if_ums(&c, &svc);
        fps.push(leaks::footprint(&c, &ctr, &id));
        ctr.kill_and_remove(&id);
        leaks::assert_footprint_gone(fps.last().unwrap(), Duration::from_secs(10));
    }
    ums_tests::note(format!(
        "{N} containers created and deleted in {:?}",
        started.elapsed()
    ));
    leaks::assert_instance_clean(&c, &fps, &[], Duration::from_secs(20));
}

both_versions!(create_delete_loop);
