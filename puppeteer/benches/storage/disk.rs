//! Disk use: the data dir through runs, retention and compaction, written
//! straight into the store and pruned by a puppeteer in this process.

use std::time::Duration;

use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;

/// Writes `count` finished runs with 4 KiB of output each (one run per
/// job), numbered from `from`, straight into the store at `db`, with a
/// flush after each run as the puppeteer's acknowledgements would. (Without
/// the flushes, sealed log buffers pile up on sled's I/O pool faster than
/// they are written, and sled 0.34.7 deadlocks when all seven pool threads
/// wait for the segment accountant while its holder waits for a file
/// truncation queued on that same pool: seen twice in four runs.)
async fn write_finished_runs(db: &std::path::Path, from: usize, count: usize) {
    use puppeteer::domain::*;
    let store = puppeteer::store::Store::open(db).unwrap();
    let output: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
    for i in from..from + count {
        let job_id = format!("job-s{i}");
        let run = Run {
            id: format!("run-s{i}"),
            job_id: job_id.clone(),
            puppet: "p1".into(),
            task_name: "t".into(),
            task_version: 1,
            state: RunState::Running,
            attempt: 1,
            cause: String::new(),
            outcome: None,
            exit_code: None,
            signal: None,
            created_at: Millis::now(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            log_length: 0,
            history: vec![],
            cancel_requested: false,
            queue_seq: store.next_seq().unwrap(),
            duplicate_reports: 0,
            needs: vec![],
            holds: vec![],
            log_base: 0,
            max_attempts: 1,
            log_gap: None,
            reboot_window_ms: None,
        };
        let job = Job {
            id: job_id,
            task_name: "t".into(),
            task_version: 1,
            spec: RunSpec {
                program: Program::Argv {
                    args: vec!["true".into()],
                },
                timeout_ms: 1000,
                env: Default::default(),
                workdir: String::new(),
                artifacts: Vec::new(),
                expect_reboot: false,
                reboot_window_ms: None,
            },
            target: Target::Puppets(vec!["p1".into()]),
            created_at: Millis::now(),
            run_count: 1,
            cancelled: false,
            seq: store.next_seq().unwrap(),
            strategy: Default::default(),
            approval: Default::default(),
            not_targeted: vec![],
            reported_end: None,
            acknowledged: None,
            created_by: None,
            approval_requested: false,
        };
        store.create_job(&job, std::slice::from_ref(&run)).unwrap();
        store
            .append_log(&run.id, 0, &output, None, |_| Ok(()))
            .unwrap();
        store
            .update_run(&run.id, |r| {
                r.end_attempt(RunState::Succeeded, Millis::now(), "exited with code 0");
                Ok(true)
            })
            .unwrap();
        store.flush().await.unwrap();
    }
}

/// Starts a puppeteer on `data` keeping `keep` finished jobs, waits until
/// its retention pass left only their logs, and stops it. Returns the
/// seconds that took and the server's view: data dir and log bytes.
async fn prune_to(data: &std::path::Path, keep: u64) -> (f64, u64, u64) {
    use geppetto_proto::v1::server_client::ServerClient;
    let mut config = puppeteer::Config::new(data.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.retention.max_jobs = keep;
    config.retention.interval = Duration::from_secs(1);
    let running = puppeteer::start(config).await.unwrap();
    let channel = {
        let slot = geppetto_proto::client::TokenSlot::default();
        slot.set(Some(&running.admin_token().unwrap())).unwrap();
        geppetto_proto::client::Channel::new(
            &geppetto_proto::client::Endpoint {
                url: running.url(false),
                ca_file: running.ca_file.clone(),
                transport: geppetto_proto::client::Transport::Grpc,
            },
            slot,
        )
        .unwrap()
    };
    let mut info = ServerClient::new(channel);
    let pruning = std::time::Instant::now();
    // Done when only the kept jobs' logs are left. (Not `pruned_jobs`: it is
    // the last pass's count, and the pass after the big one, a second later,
    // prunes nothing and resets it.)
    let left = wait_until_async(
        "retention left only the kept jobs' logs",
        Duration::from_secs(3600),
        async || {
            let i = info
                .get_server_info(pb::GetServerInfoRequest {})
                .await
                .unwrap()
                .into_inner();
            if i.log_bytes <= keep * 4096 {
                Ok(i)
            } else {
                Err(format!("{i:?}"))
            }
        },
    )
    .await;
    let took = pruning.elapsed().as_secs_f64();
    running.stop().await.unwrap();
    (took, left.data_dir_bytes, left.log_bytes)
}

/// Disk use: the data dir after `count` finished runs with 4 KiB of output
/// each (one run per job), after retention pruned 90% of them, after 90%
/// more runs and retention again (is freed space reused?), and after an
/// offline compaction. Prints a Markdown table, one row per step.
pub async fn storage_after_runs_retention_and_compaction(count: usize) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("data");
    let db = data.join("db");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let db_size = || puppeteer::store::dir_bytes(&db);
    let keep = (count / 10) as u64;
    let again = count - keep as usize;

    let started = std::time::Instant::now();
    write_finished_runs(&db, 0, count).await;
    println!(
        "{count} runs of 4 KiB written in {:.1}s; stored output {:.1} MiB",
        started.elapsed().as_secs_f64(),
        mib(count as u64 * 4096)
    );
    println!("| step | database on disk |");
    println!("|---|---|");
    println!("| after {count} runs | {:.1} MiB |", mib(db_size()));

    for round in 1..=2 {
        if round == 2 {
            let started = std::time::Instant::now();
            write_finished_runs(&db, count, again).await;
            println!(
                "| after {again} more runs ({:.1}s), {} in all | {:.1} MiB |",
                started.elapsed().as_secs_f64(),
                keep as usize + again,
                mib(db_size())
            );
        }
        let (took, server_bytes, log_bytes) = prune_to(&data, keep).await;
        println!(
            "| after retention pruned {again} jobs in {took:.1}s (keeping {keep}), puppeteer stopped | {:.1} MiB (server said {:.1} MiB, logs {:.1} MiB) |",
            mib(db_size()),
            mib(server_bytes),
            mib(log_bytes)
        );
    }
    let compacting = std::time::Instant::now();
    let (before, after) = puppeteer::backup::compact(&data).unwrap();
    println!(
        "| after `puppeteer compact` ({:.1}s) | {:.1} MiB (was {:.1} MiB) |",
        compacting.elapsed().as_secs_f64(),
        mib(after),
        mib(before)
    );
}
