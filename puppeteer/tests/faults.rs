//! Bad networks: a real puppeteer process and a real puppet process talk
//! through a fault-injecting TCP relay (`common/faultproxy.rs`) that cuts,
//! drops, delays and ages their connections, and the puppeteer or the puppet
//! is `kill -9`ed at chosen moments. Each scenario checks the three promises:
//! no log byte is lost (the stored log equals the expected bytes exactly),
//! each result is recorded once (the run's history), and each script is
//! executed once per attempt (it appends a line to a file; the test counts the
//! lines).

//!
//! The `netns_` scenarios run the puppet in a network namespace across a
//! veth link slowed by tbf, made lossy by nftables and cut with `ip link`;
//! where that is impossible (not root, no iproute2) they say SKIPPED loudly.
//! With `GEPPETTO_REQUIRE_NETNS` set (CI) they fail instead.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/puppetproc.rs"]
mod puppetproc;
#[path = "common/rig.rs"]
mod rig;

use std::time::Duration;

use faultproxy::{Then, When};
use geppetto_proto::v1 as pb;
use geppetto_test_support::{wait_until, wait_until_async};
use rig::{PATIENCE, Rig, seq_output};

/// Hosts the puppet processes of these tests (see `common/puppetproc.rs`).
#[test]
fn puppet_process_entry() {
    puppetproc::entry();
}

/// Lines of `seq` for about 2 MiB of output.
const TWO_MIB: u32 = 300_000;
/// Lines of `seq` for about 1 MiB of output.
const ONE_MIB: u32 = 160_000;

#[tokio::test]
async fn a_cut_during_a_held_poll_loses_nothing() {
    let rig = Rig::start(&["--poll-timeout", "5s"], &[]).await;
    rig.task("t", ONE_MIB, "", 0).await;
    // A plain cut of the held poll: the puppet polls again.
    let before = rig.proxy.stats().connections;
    rig.proxy.cut_all();
    wait_until("the puppet opened a new connection", PATIENCE, || {
        rig.proxy.stats().connections > before
    })
    .await;
    rig.admin().wait_polling("p1").await;
    // The held poll's answer carrying the assignment is lost with the link:
    // the puppeteer offers the run again and the puppet runs it once.
    let fired = rig.proxy.arm(When::NthResponse(1), Then::CutBefore);
    let run_id = rig.launch("t").await;
    fired.wait(PATIENCE).await;
    let run = rig.wait_succeeded(&run_id).await;
    rig.assert_delivered_once(&run, &seq_output(ONE_MIB), 1)
        .await;
}

#[tokio::test]
async fn a_cut_during_a_log_upload_loses_nothing() {
    // Uncompressed: the cuts are triggered by byte counts of the upload,
    // which gzip would shrink below them.
    let rig = Rig::start(&["--poll-timeout", "5s"], &["--compression", "none"]).await;
    rig.task("t", TWO_MIB, "", 0).await;
    // Cut in the middle of a chunk's request; then every connection is cut
    // and new ones are refused for a while; then a second cut mid-chunk.
    let fired = rig.proxy.arm(When::UpBytes(400_000), Then::CutBefore);
    let run_id = rig.launch("t").await;
    fired.wait(PATIENCE).await;
    rig.proxy.set_refuse(true);
    rig.proxy.cut_all();
    let fired = rig.proxy.arm(When::UpBytes(500_000), Then::CutBefore);
    let refused = rig.proxy.stats().refused;
    wait_until("two reconnections were refused", PATIENCE, || {
        rig.proxy.stats().refused >= refused + 2
    })
    .await;
    rig.proxy.set_refuse(false);
    fired.wait(PATIENCE).await;
    let run = rig.wait_succeeded(&run_id).await;
    rig.assert_delivered_once(&run, &seq_output(TWO_MIB), 1)
        .await;
}

#[tokio::test]
async fn lost_acknowledgements_make_the_same_offset_resent_and_accepted_once() {
    // Uncompressed: the cuts are triggered by byte counts of the upload,
    // which gzip would shrink below them.
    let rig = Rig::start(&["--poll-timeout", "5s"], &["--compression", "none"]).await;
    rig.task("t", TWO_MIB, "", 0).await;
    // The answer to a chunk that the puppeteer stored is dropped, so the
    // puppet sends the same offset again; three times during the upload.
    let fired = rig
        .proxy
        .arm(When::ResponseAfterUp(300_000), Then::CutBefore);
    let run_id = rig.launch("t").await;
    fired.wait(PATIENCE).await;
    for _ in 0..2 {
        let fired = rig
            .proxy
            .arm(When::ResponseAfterUp(300_000), Then::CutBefore);
        fired.wait(PATIENCE).await;
    }
    let run = rig.wait_succeeded(&run_id).await;
    let expected = seq_output(TWO_MIB);
    // The chunks whose answers were lost went up twice.
    let up = rig.proxy.stats().bytes_up;
    assert!(
        up >= expected.len() as u64 + 400_000,
        "only {up} bytes went up for a {}-byte log",
        expected.len()
    );
    rig.assert_delivered_once(&run, &expected, 1).await;
}

#[tokio::test]
async fn the_puppeteer_killed_right_after_an_acknowledgement_loses_nothing() {
    let mut rig = Rig::start(&["--poll-timeout", "5s"], &[]).await;
    rig.task("t", TWO_MIB, "", 0).await;
    // kill -9 right after the proxy forwarded the answer to a log chunk.
    let fired = rig.proxy.arm(When::ResponseAfterUp(500_000), Then::Notify);
    let run_id = rig.launch("t").await;
    fired.wait(PATIENCE).await;
    rig.crash_server().await;
    // And right after the puppeteer acknowledged the result.
    let run = rig.wait_succeeded(&run_id).await;
    rig.crash_server().await;
    rig.assert_delivered_once(&run, &seq_output(TWO_MIB), 1)
        .await;
    let again = rig.wait_succeeded(&run_id).await;
    assert_eq!(
        again.history, run.history,
        "nothing changed after the crash"
    );
}

#[tokio::test]
async fn a_puppet_killed_mid_run_reports_interrupted_and_the_retry_runs_once() {
    let mut rig = Rig::start(&["--poll-timeout", "5s"], &[]).await;
    // The first attempt prints, then sleeps until killed; the second finishes.
    let pids = rig.dir.path().join("pids");
    let tail = format!(
        "echo $$ >> '{}'\nif [ \"$(wc -l < '{}')\" -eq 1 ]; then sleep 300; fi",
        pids.display(),
        rig.marks.display()
    );
    rig.task("t", ONE_MIB, &tail, 1).await;
    let run_id = rig.launch("t").await;
    let partial = seq_output(ONE_MIB);
    rig.wait_run(&run_id, "uploaded its whole output", |run| {
        run.log_length == partial.len() as u64 && pids.exists()
    })
    .await;
    rig.crash_puppet().await;
    // kill -9 leaves the run's process group alive: the test kills it.
    let pid = std::fs::read_to_string(&pids).unwrap();
    let pgid = pid.lines().next().unwrap().trim();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    let run = rig.wait_succeeded(&run_id).await;
    let interrupted: Vec<_> = run
        .history
        .iter()
        .filter(|t| t.state == pb::RunState::Interrupted as i32)
        .collect();
    assert_eq!(interrupted.len(), 1, "{:?}", run.history);
    assert_eq!(interrupted[0].attempt, 1);
    // The run's log holds each attempt's output, one after the other.
    let both = [partial.as_slice(), partial.as_slice()].concat();
    rig.assert_delivered_once(&run, &both, 2).await;
}

#[tokio::test]
async fn a_proxy_closing_every_connection_before_the_hold_ends_loses_nothing() {
    let rig = Rig::start(&["--poll-timeout", "6s"], &[]).await;
    // Every connection dies at 2 s, well before the 6 s hold, and the upload
    // is slowed to span several connection lifetimes.
    rig.proxy.set_max_age(Some(Duration::from_secs(2)));
    rig.proxy.set_rate(Some(400_000));
    // The age limit holds for connections made from now on: the puppet's
    // connection (reused for every poll) is cut so that its next one is aged.
    rig.proxy.cut_all();
    let cut_before = rig.proxy.stats().cut;
    rig.task("t", TWO_MIB, "", 0).await;
    let run_id = rig.launch("t").await;
    let run = rig.wait_succeeded(&run_id).await;
    rig.assert_delivered_once(&run, &seq_output(TWO_MIB), 1)
        .await;
    // Held polls are cut too (the run reported before the next poll, so
    // its upload may have fitted in one connection's life).
    wait_until("held polls were cut", Duration::from_secs(30), || {
        let stats = rig.proxy.stats();
        if stats.cut >= cut_before + 2 {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
    // An idle puppet stays reachable: the next run is dispatched and done.
    rig.task("u", 10, "", 0).await;
    let run_id = rig.launch("u").await;
    rig.wait_succeeded(&run_id).await;
}

#[tokio::test]
async fn a_blackholed_connection_is_abandoned_and_nothing_is_lost() {
    let rig = Rig::start(&["--poll-timeout", "3s"], &["--poll-hold", "3s"]).await;
    rig.task("t", ONE_MIB, "", 0).await;
    // The held poll's connection goes dead without a close; its answer
    // (the assignment) vanishes. The puppet must notice by itself.
    rig.admin().wait_polling("p1").await;
    rig.proxy.blackhole_all();
    let run_id = rig.launch("t").await;
    let run = rig.wait_succeeded(&run_id).await;
    assert!(rig.proxy.stats().dropped > 0, "{:?}", rig.proxy.stats());
    rig.assert_delivered_once(&run, &seq_output(ONE_MIB), 1)
        .await;
}

#[tokio::test]
async fn netns_a_log_upload_across_a_cut_link_loses_nothing() {
    let test = "netns_a_log_upload_across_a_cut_link_loses_nothing";
    let Some(ns) = netns::create_or_skip(test) else {
        return;
    };
    // 8 Mbit/s, so that the 2 MiB upload takes a couple of seconds and the
    // cut lands in its middle.
    ns.limit_rate(8_000).unwrap();
    let rig = Rig::start_in(Some(&ns), &["--poll-timeout", "5s"], &[]).await;
    rig.task("t", TWO_MIB, "", 0).await;
    let fired = rig.proxy.arm(When::UpBytes(400_000), Then::Notify);
    let run_id = rig.launch("t").await;
    fired.wait(PATIENCE).await;
    ns.set_link(false).unwrap();
    let expected = seq_output(TWO_MIB);
    let during = rig
        .wait_run(&run_id, "can be read", |_| true)
        .await
        .log_length;
    assert!(
        during < expected.len() as u64,
        "the cut came after the upload"
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself, not a synchronisation
    ns.set_link(true).unwrap();
    let run = rig.wait_succeeded(&run_id).await;
    rig.assert_delivered_once(&run, &expected, 1).await;
}

#[tokio::test]
async fn netns_a_run_completes_across_a_slow_lossy_link() {
    let test = "netns_a_run_completes_across_a_slow_lossy_link";
    let Some(mut ns) = netns::create_with_nft_or_skip(test) else {
        return;
    };
    // 512 kbit/s each way, 2 % loss each way, 300 ms round trip.
    ns.limit_rate(512).unwrap();
    ns.drop_percent(2).unwrap();
    let rig = Rig::start_in(Some(&ns), &["--poll-timeout", "5s"], &[]).await;
    rig.proxy.set_delay(Duration::from_millis(150));
    rig.task("t", ONE_MIB, "", 0).await;
    let run_id = rig.launch("t").await;
    let run = rig.wait_succeeded(&run_id).await;
    rig.assert_delivered_once(&run, &seq_output(ONE_MIB), 1)
        .await;
}

/// Output the child printed while the puppet was frozen (it read nothing)
/// and then `kill -9`ed: the issue promises it is not lost. The child writes
/// into the spool file itself, so there is no pipe buffer to lose.
#[tokio::test]
async fn output_printed_just_before_the_puppet_dies_is_not_lost() {
    let mut rig = Rig::start(&["--poll-timeout", "5s"], &[]).await;
    let go = rig.dir.path().join("go");
    let printed = rig.dir.path().join("printed");
    let pids = rig.dir.path().join("pids");
    let body = format!(
        "echo started >> '{marks}'\necho $$ > '{pids}'\nwhile [ ! -e '{go}' ]; do sleep 0.05; done\nseq 1 5000\ntouch '{printed}'\nsleep 300\n",
        marks = rig.marks.display(),
        pids = pids.display(),
        go = go.display(),
        printed = printed.display(),
    );
    rig.admin()
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "t".into(),
            spec: Some(common::script_spec(&body, Duration::from_secs(300))),
            ..Default::default()
        })
        .await
        .unwrap();
    let run_id = rig.launch("t").await;
    rig.wait_run(&run_id, "is running", |run| {
        run.state == pb::RunState::Running as i32 && pids.exists()
    })
    .await;
    // The puppet stops reading; the child prints less than a pipe buffer.
    let puppet_pid = rig.puppet.as_ref().unwrap().pid().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &puppet_pid])
        .status()
        .unwrap();
    std::fs::write(&go, b"").unwrap();
    wait_until("the child printed", PATIENCE, || printed.exists()).await;
    rig.crash_puppet().await;
    let pgid = std::fs::read_to_string(&pids).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", pgid.trim())])
        .status();
    let run = rig
        .wait_run(&run_id, "is interrupted", |run| {
            run.state == pb::RunState::Interrupted as i32
        })
        .await;
    let log = rig.admin().log(&run.id).await;
    assert_eq!(rig.starts(), 1);
    assert_eq!(
        log.len(),
        seq_output(5000).len(),
        "the child printed {} bytes before the puppet died; {} reached the puppeteer",
        seq_output(5000).len(),
        log.len()
    );
}

/// A middlebox that closes every connection after 1 s on a link where a
/// full 256 KiB chunk needs 2 s: the puppet shrinks its chunks until they get
/// through, instead of resending the same chunk forever (a bug this bench
/// found).
#[tokio::test]
async fn chunks_shrink_until_they_fit_in_short_lived_connections() {
    let rig = Rig::start(&["--poll-timeout", "5s"], &[]).await;
    rig.proxy.set_max_age(Some(Duration::from_secs(1)));
    rig.proxy.set_rate(Some(128_000));
    // The puppet reuses its connection: cut it, so every later one is aged.
    rig.proxy.cut_all();
    rig.task("t", ONE_MIB, "", 0).await;
    let run_id = rig.launch("t").await;
    let run = rig.wait_succeeded(&run_id).await;
    rig.assert_delivered_once(&run, &seq_output(ONE_MIB), 1)
        .await;
}

/// The seed's story, as an operator lives it, over a slow lossy site link
/// at the default poll and lease settings: six puppets behind 512 kbit/s
/// with 2 % loss each way and a 300 ms round trip; a patch under a
/// capacity-1 resource with a bandwidth budget; a test job, then an
/// approved rolling prod job stopping at the first failure, then a
/// dependent verify job. Every run succeeds, none is lost.
#[tokio::test]
async fn netns_a_rollout_over_a_slow_site_succeeds_at_the_defaults() {
    let test = "netns_a_rollout_over_a_slow_site_succeeds_at_the_defaults";
    let Some(mut ns) = netns::create_with_nft_or_skip(test) else {
        return;
    };
    ns.limit_rate(512).unwrap();
    ns.drop_percent(2).unwrap();
    // No shortened timings: the puppeteer's and the puppets' defaults.
    let rig = Rig::start_in(Some(&ns), &[], &[]).await;
    rig.proxy.set_delay(Duration::from_millis(150));
    let mut admin = rig.admin();
    let secret = admin.enroll_secret().await;
    let mut puppets = Vec::new();
    for i in 2..=6 {
        let mut options = rig.puppet_options.clone();
        options.name = format!("p{i}");
        options.state_dir = rig.dir.path().join(format!("puppet-state-{i}"));
        options.enroll_token = secret.clone();
        puppets.push(puppetproc::PuppetProc::start(options));
    }
    for i in 1..=6 {
        let name = format!("p{i}");
        wait_until_async(&format!("{name} holds a poll"), PATIENCE, async || {
            let found = admin
                .puppets
                .get_puppet(pb::GetPuppetRequest { name: name.clone() })
                .await;
            found.is_ok_and(|p| p.into_inner().polling)
        })
        .await;
        let env = if i <= 2 { "test" } else { "prod" };
        admin.label(&name, "env", env).await;
    }
    // The site's uplink: one download at a time, 40 KiB/s of 64 KB/s.
    geppetto_proto::v1::resources_client::ResourcesClient::new(admin.channel.clone())
        .create_resource(pb::CreateResourceRequest {
            site: String::new(),
            name: "uplink".into(),
            capacity: 1,
            bandwidth: 40 * 1024,
        })
        .await
        .unwrap();
    let patch: Vec<u8> = (0..96 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    admin.upload_artifact("patch.bin", &patch).await;
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "patch".into(),
            spec: Some(pb::RunSpec {
                artifacts: vec![pb::ArtifactRef {
                    name: "patch.bin".into(),
                    ..Default::default()
                }],
                ..common::script_spec(
                    "test -s \"$GEPPETTO_ARTIFACT_PATCH_BIN\" && echo patched",
                    Duration::from_secs(300),
                )
            }),
            resources: vec![pb::ResourceNeed {
                name: "uplink".into(),
                count: 1,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .script_task("verify", "echo verified", Duration::from_secs(60))
        .await;

    let selector = |s: &str| pb::target::Kind::Selector(s.into());
    let test_job = admin
        .run_with("patch", selector("env=test"), pb::Strategy::default())
        .await;
    let prod = admin
        .run_with(
            "patch",
            selector("env=prod"),
            pb::Strategy {
                after_job: test_job.id.clone(),
                approval: true,
                rolling: true,
                max_failures: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Count(1)),
                }),
                ..Default::default()
            },
        )
        .await;
    let verify = admin
        .run_with(
            "verify",
            selector("env"),
            pb::Strategy {
                after_job: prod.id.clone(),
                ..Default::default()
            },
        )
        .await;

    // The approval is asked for once the test job succeeded.
    wait_until_async(
        "every run of prod waits for approval",
        PATIENCE * 3,
        async || {
            let job = admin.job(&prod.id).await;
            if job.runs.iter().all(|r| r.cause == "waiting for approval") {
                Ok(())
            } else {
                Err(format!("{job:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        admin.job(&test_job.id).await.state,
        pb::JobState::Succeeded as i32
    );
    admin
        .jobs
        .approve_job(pb::ApproveJobRequest {
            id: prod.id.clone(),
        })
        .await
        .unwrap();
    let done = admin.wait_job(&verify.id, PATIENCE * 5).await;
    for job in [&test_job.id, &prod.id, &verify.id] {
        let job = admin.job(job).await;
        for run in &job.runs {
            assert_eq!(
                run.state,
                pb::RunState::Succeeded as i32,
                "{} on {}: {}; puppet log:\n{}",
                job.id,
                run.puppet,
                run.cause,
                rig.puppet_log()
            );
        }
    }
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    for puppet in puppets {
        puppet.stop().await;
    }
}

/// The site peer cache across a real slow uplink: four puppets in a site
/// namespace behind 512 kbit/s with 2 % loss each way, serving their caches
/// to each other on the site's side of the link; a 3 MiB artifact for all
/// of them. A peer that others are fetching from is `kill -9`ed mid-transfer
/// and started again (its own run, interrupted before it started, is
/// retried). Every run succeeds with the right bytes, and the
/// uplink carries at most 1.1 times the artifact (everything counted: polls,
/// logs, handshakes).
#[tokio::test]
async fn netns_a_site_behind_a_slow_uplink_fetches_an_artifact_once() {
    use sha2::Digest;
    let test = "netns_a_site_behind_a_slow_uplink_fetches_an_artifact_once";
    let Some(mut ns) = netns::create_with_nft_or_skip(test) else {
        return;
    };
    ns.limit_rate(512).unwrap();
    ns.drop_percent(2).unwrap();
    let peer_args = |ns: &netns::NetNs| {
        vec![
            "--labels".to_string(),
            "site=lab".into(),
            "--peer-listen".into(),
            format!("{}:0", ns.ns_ip),
        ]
    };
    let args = peer_args(&ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut rig = Rig::start_in(Some(&ns), &["--poll-timeout", "5s"], &args).await;
    let mut admin = rig.admin();
    let secret = admin.enroll_secret().await;
    let mut puppets = std::collections::BTreeMap::new();
    for i in 2..=4 {
        let mut options = rig.puppet_options.clone();
        options.name = format!("p{i}");
        options.state_dir = rig.dir.path().join(format!("puppet-state-{i}"));
        options.enroll_token = secret.clone();
        puppets.insert(options.name.clone(), puppetproc::PuppetProc::start(options));
    }
    for i in 1..=4 {
        let name = format!("p{i}");
        wait_until_async(&format!("{name} holds a poll"), PATIENCE, async || {
            let found = admin
                .puppets
                .get_puppet(pb::GetPuppetRequest { name: name.clone() })
                .await;
            found.is_ok_and(|p| p.into_inner().polling)
        })
        .await;
    }
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    let digest = hex::encode(sha2::Sha256::digest(&data));
    admin.upload_artifact("patch.bin", &data).await;
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "patch".into(),
            spec: Some(pb::RunSpec {
                artifacts: vec![pb::ArtifactRef {
                    name: "patch.bin".into(),
                    ..Default::default()
                }],
                ..common::script_spec(
                    "sha256sum \"$GEPPETTO_ARTIFACT_PATCH_BIN\" | cut -d' ' -f1",
                    Duration::from_secs(60),
                )
            }),
            // The killed puppet's own run is interrupted before it started:
            // its retry runs once it is back.
            retries: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let (tx_before, _) = ns.host_bytes();
    let job = admin.run_on("patch", &["p1", "p2", "p3", "p4"]).await;

    // Find a puppet that others fetch from while it receives, and kill it
    // once it holds part of the content.
    let copies = async |admin: &common::Admin| {
        geppetto_proto::v1::artifacts_client::ArtifactsClient::new(admin.channel.clone())
            .get_artifact(pb::GetArtifactRequest {
                name: "patch.bin".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .copies
    };
    let mut victim = String::new();
    wait_until_async(
        "a peer serving others while it receives",
        PATIENCE,
        async || {
            let copies = copies(&admin).await;
            let middle = copies.iter().find(|c| {
                !c.held
                    && !c.source.is_empty()
                    && c.puppet != "p1"
                    && copies.iter().any(|d| d.source == c.puppet)
            });
            match middle {
                Some(c) => {
                    victim = c.puppet.clone();
                    Ok(())
                }
                None => Err(format!("{copies:?}")),
            }
        },
    )
    .await;
    let part = rig
        .dir
        .path()
        .join(format!("puppet-state-{}", &victim[1..]))
        .join("cache")
        .join(format!("{digest}.part"));
    wait_until("the victim holds part of the content", PATIENCE, || {
        std::fs::metadata(&part).is_ok_and(|m| m.len() >= 256 * 1024)
    })
    .await;
    let options = puppets.remove(&victim).unwrap().kill9().await;
    puppets.insert(victim.clone(), puppetproc::PuppetProc::start(options));

    let job = admin.wait_job(&job.id, PATIENCE * 5).await;
    for run in &job.runs {
        let log = String::from_utf8(admin.log(&run.run_id).await).unwrap();
        assert_eq!(
            run.state,
            pb::RunState::Succeeded as i32,
            "{} on {}: {}\n{log}",
            run.run_id,
            run.puppet,
            run.cause
        );
        assert_eq!(log.trim(), digest, "{}", run.puppet);
    }
    let (tx_after, _) = ns.host_bytes();
    let uplink = tx_after - tx_before;
    eprintln!(
        "the uplink carried {uplink} bytes for a {}-byte artifact to 4 puppets ({victim} killed mid-transfer)",
        data.len()
    );
    assert!(
        uplink as f64 <= 1.1 * data.len() as f64,
        "the uplink carried {uplink} bytes for a {}-byte artifact",
        data.len()
    );
    for (_, p) in puppets {
        p.stop().await;
    }
    let _ = rig.puppet.take();
}
