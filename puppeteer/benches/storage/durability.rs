//! Durability: what flushing before acknowledging costs, with and without
//! group commit, on the store alone (no server, no network).

use std::time::Duration;

/// The cost of durable acknowledgements, with and without group commit:
/// `C` concurrent writers each append a 100-byte log chunk to a run of their
/// own and flush before "acknowledging", for two seconds per setting; and,
/// as the baseline, the same appends acknowledged without any flush (what
/// durability costs is the difference).
/// Prints a Markdown table, one row per setting.
pub async fn durability_cost_of_acknowledgements() {
    use puppeteer::domain::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = puppeteer::store::Store::open(&dir.path().join("db")).unwrap();
    let run = |i: usize| Run {
        id: format!("run-b{i}"),
        job_id: "job-b".into(),
        puppet: "p1".into(),
        task_name: "t".into(),
        task_version: 1,
        state: RunState::Running,
        attempt: 1,
        cause: String::new(),
        outcome: None,
        exit_code: None,
        signal: None,
        created_at: Millis(0),
        started_at: None,
        finished_at: None,
        duration_ms: None,
        log_length: 0,
        history: vec![],
        cancel_requested: false,
        queue_seq: i as u64,
        duplicate_reports: 0,
        needs: vec![],
        holds: vec![],
        log_base: 0,
        max_attempts: 1,
        log_gap: None,
        reboot_window_ms: None,
    };
    let runs: Vec<Run> = (0..64).map(run).collect();
    let job = Job {
        id: "job-b".into(),
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
        created_at: Millis(0),
        run_count: runs.len() as u64,
        cancelled: false,
        seq: 1,
        strategy: Default::default(),
        approval: Default::default(),
        not_targeted: vec![],
        reported_end: None,
        acknowledged: None,
        created_by: None,
        approval_requested: false,
    };
    store.create_job(&job, &runs).unwrap();
    let offsets: Arc<Vec<AtomicU64>> = Arc::new((0..64).map(|_| AtomicU64::new(0)).collect());
    println!("| writers | flush | acks/s | flushes/s | acks per flush |");
    println!("|---|---|---|---|---|");
    #[derive(Clone, Copy, PartialEq)]
    enum Flush {
        None,
        Alone,
        Grouped,
    }
    for writers in [1usize, 8, 64] {
        for mode in [Flush::None, Flush::Alone, Flush::Grouped] {
            let acks = Arc::new(AtomicU64::new(0));
            let flushes_before = store.flushes();
            let stop = tokio::time::Instant::now() + Duration::from_secs(2);
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..writers {
                let (store, acks, offsets) = (store.clone(), acks.clone(), offsets.clone());
                tasks.spawn(async move {
                    let mut own_flushes = 0u64;
                    while tokio::time::Instant::now() < stop {
                        let offset = offsets[w].load(Ordering::Relaxed);
                        store
                            .append_log(
                                &format!("run-b{w}"),
                                offset,
                                &[b'x'; 100],
                                None,
                                |_| Ok(()),
                            )
                            .unwrap();
                        offsets[w].store(offset + 100, Ordering::Relaxed);
                        match mode {
                            Flush::None => tokio::task::yield_now().await,
                            Flush::Alone => {
                                store.flush_alone().await.unwrap();
                                own_flushes += 1;
                            }
                            Flush::Grouped => store.flush().await.unwrap(),
                        }
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    own_flushes
                });
            }
            let mut flushes = 0;
            while let Some(done) = tasks.join_next().await {
                flushes += done.unwrap();
            }
            if mode == Flush::Grouped {
                flushes = store.flushes() - flushes_before;
            }
            // The next setting starts from a clean log: what this one left
            // unflushed (all of it, for the baseline) is not its to pay.
            store.flush_alone().await.unwrap();
            let acks = acks.load(Ordering::Relaxed);
            let per_flush = match flushes {
                0 => "-".to_string(),
                n => format!("{:.1}", acks as f64 / n as f64),
            };
            println!(
                "| {writers} | {} | {:.0} | {:.0} | {per_flush} |",
                match mode {
                    Flush::None => "none (not durable)",
                    Flush::Alone => "one each",
                    Flush::Grouped => "group commit",
                },
                acks as f64 / 2.0,
                flushes as f64 / 2.0,
            );
        }
    }
}
