//! Live migrations on a private two-system test bed (issue 3, "Integration tests on the test
//! bed" and "Nothing lost"), driven exactly as a user would: services started with `ctr run
//! --runtime io.containerd.ums.v1` on system a (containerd 1.6), moved with `ums migrate --json`
//! (run inside a's network namespace), checked with ctr of each system.
//!
//! The binary brings up its OWN test bed with `hack/testbed.sh up` (namespaces `umst-a`/`umst-b`,
//! dir /run/umst, the shim and `ums` of target/debug), once, when the first test needs it; the
//! tests run one at a time (a static mutex) and `hack/testbed.sh down` runs at process exit
//! (atexit), failed tests or not. A failed test copies the test bed's logs (containerd,
//! coordinators, services) to target/ums-test-logs/testbed-<test>/ before anything is removed.
//!
//! `cargo test -p ums-tests --test testbed -- --test-threads=1` (after `cargo build --workspace`).

mod approach;
mod common;
mod control;
mod cri;
mod failures;
mod frontman;
mod ops;
mod outer;
mod scenarios;

use common::with_bed;

#[test]
fn counter_a_to_b() {
    with_bed("counter_a_to_b", scenarios::counter_a_to_b);
}

#[test]
fn memhog_128mib() {
    with_bed("memhog_128mib", scenarios::memhog_128mib);
}

#[test]
fn memhog_post_copy() {
    with_bed("memhog_post_copy", scenarios::memhog_post_copy);
}

#[test]
fn memhog_held() {
    with_bed("memhog_held", scenarios::memhog_held);
}

#[test]
fn post_copy_pages_lost() {
    with_bed("post_copy_pages_lost", failures::post_copy_pages_lost);
}

#[test]
fn held_pages_lost() {
    with_bed("held_pages_lost", failures::held_pages_lost);
}

#[test]
fn multiproc() {
    with_bed("multiproc", scenarios::multiproc);
}

#[test]
fn files_written() {
    with_bed("files_written", scenarios::files_written);
}

#[test]
fn ping_pong_10() {
    with_bed("ping_pong_10", scenarios::ping_pong_10);
}

#[test]
fn cri_container_a_to_b() {
    with_bed("cri_container_a_to_b", scenarios::cri_container_a_to_b);
}

#[test]
fn cri_to_cri_and_back() {
    with_bed("cri_to_cri_and_back", cri::cri_to_cri_and_back);
}

#[test]
fn cri_fail_image_not_on_b() {
    with_bed("cri_fail_image_not_on_b", cri::cri_image_not_on_b);
}

#[test]
fn cri_fail_restore_on_b() {
    with_bed("cri_fail_restore_on_b", cri::cri_restore_fails_on_b);
}

#[test]
fn fail_image_not_on_b() {
    with_bed("fail_image_not_on_b", failures::image_not_on_b);
}

#[test]
fn fail_destination_vanishes() {
    with_bed("fail_destination_vanishes", failures::destination_vanishes);
}

#[test]
fn fail_criu_dump_on_a() {
    with_bed("fail_criu_dump_on_a", failures::criu_dump_on_a);
}

#[test]
fn fail_criu_restore_on_b() {
    with_bed("fail_criu_restore_on_b", failures::criu_restore_on_b);
}

#[test]
fn refuse_second_migration() {
    with_bed("refuse_second_migration", failures::second_migration);
}

#[test]
fn refuse_bad_refs() {
    with_bed("refuse_bad_refs", failures::bad_refs);
}

#[test]
fn outer_image_nested_counter_a_to_b() {
    with_bed(
        "outer_image_nested_counter_a_to_b",
        outer::nested_counter_a_to_b,
    );
}

#[test]
fn approach_dry_runs() {
    with_bed("approach_dry_runs", approach::dry_runs);
}

#[test]
fn approach_both_migrate_the_counter() {
    with_bed(
        "approach_both_migrate_the_counter",
        approach::both_approaches,
    );
}

#[test]
fn fail_destination_down_at_start() {
    with_bed(
        "fail_destination_down_at_start",
        failures::destination_down_at_start,
    );
}

#[test]
fn ops_tls_migration() {
    with_bed("ops_tls_migration", ops::tls_migration);
}

#[test]
fn ops_auth_refused() {
    with_bed("ops_auth_refused", ops::auth_refused);
}

#[test]
fn ops_stream_token_bound() {
    with_bed("ops_stream_token_bound", ops::stream_token_bound);
}

#[test]
fn frontman_tcp_mode() {
    with_bed("frontman_tcp_mode", frontman::tcp_mode);
}

#[test]
fn frontman_http_mode() {
    with_bed("frontman_http_mode", frontman::http_mode);
}

#[test]
fn frontman_bypass_refused() {
    with_bed("frontman_bypass_refused", frontman::bypass_refused);
}

#[test]
fn approach_forced_infeasible_refused() {
    with_bed(
        "approach_forced_infeasible_refused",
        approach::forced_infeasible_refused,
    );
}

#[test]
fn fail_destination_killed_mid_stream() {
    with_bed(
        "fail_destination_killed_mid_stream",
        failures::destination_killed_mid_stream,
    );
}

#[test]
fn approach_orchestrator_rollback() {
    with_bed(
        "approach_orchestrator_rollback",
        approach::orchestrator_rollback,
    );
}

#[test]
fn fail_source_restarted() {
    with_bed("fail_source_restarted", failures::source_restarted);
}

#[test]
fn fail_disk_full_on_b() {
    with_bed("fail_disk_full_on_b", failures::disk_full_on_b);
}

#[test]
fn refuse_bad_api_input() {
    with_bed("refuse_bad_api_input", control::bad_input);
}

#[test]
fn refuse_control_during_migration() {
    with_bed(
        "refuse_control_during_migration",
        control::control_plane_during_migration,
    );
}
