//! The throwaway PostgreSQL server: fresh databases, a hard restart, and the
//! server dying with the test process even when it is killed with SIGKILL.
//! Skipped (loudly, by `server()`) where PostgreSQL is not installed.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use geppetto_test_support::block_until;
use geppetto_test_support::postgres;

/// The database's name, the URL's last part.
fn name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

#[test]
fn fresh_databases_are_distinct_and_outlive_a_restart() {
    let Some(server) = postgres::server() else {
        return;
    };
    assert!(
        std::ptr::eq(server, postgres::server().unwrap()),
        "one server a process"
    );

    let first = server.fresh_database();
    let second = server.fresh_database();
    let prefix = format!("postgres://geppetto@127.0.0.1:{}/t_", server.port());
    assert!(first.starts_with(&prefix), "{first}");
    assert!(second.starts_with(&prefix), "{second}");
    assert_ne!(first, second);
    let (first, second) = (name(&first), name(&second));

    let listed = server
        .psql(
            "postgres",
            &format!(
                "SELECT datname FROM pg_database WHERE datname IN ('{first}', '{second}') \
                 ORDER BY datname"
            ),
        )
        .unwrap();
    let mut expected = [first, second];
    expected.sort();
    assert_eq!(listed, expected.join("\n"));

    // Distinct databases: a table made in one is not in the other.
    server
        .psql(
            first,
            "CREATE TABLE only_here (x int); INSERT INTO only_here VALUES (42)",
        )
        .unwrap();
    let tables = "SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'";
    assert_eq!(server.psql(first, tables).unwrap(), "1");
    assert_eq!(server.psql(second, tables).unwrap(), "0");

    // Under load: a query that would run forever, and never looks whether
    // its server is still there, is cut by the restart.
    let started = "SELECT pg_postmaster_start_time()";
    let before = server.psql("postgres", started).unwrap();
    let cut = std::thread::scope(|scope| {
        let busy =
            scope.spawn(|| server.psql(second, "DO $$ BEGIN LOOP PERFORM 1; END LOOP; END $$"));
        let running = format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = '{second}' AND state = 'active'"
        );
        block_until("the endless query runs", Duration::from_secs(30), || {
            server
                .psql("postgres", &running)
                .is_ok_and(|count| count == "1")
        });
        server.restart();
        busy.join().unwrap()
    });
    assert!(cut.is_err(), "the endless query is cut: {cut:?}");
    let after = server.psql("postgres", started).unwrap();
    assert_ne!(before, after, "a new server after the restart");
    // Committed data survives the crash, and new databases still come.
    assert_eq!(server.psql(first, "SELECT x FROM only_here").unwrap(), "42");
    let third = server.fresh_database();
    assert_eq!(server.psql(name(&third), "SELECT 1").unwrap(), "1");
}

/// Set in the child process of the test below.
const CHILD_VAR: &str = "GEPPETTO_TEST_POSTGRES_CHILD";
const CHILD_TEST: &str = "the_server_dies_with_a_killed_test_process";
/// Begins the child's line saying where its server is.
const MARK: &str = "child's server: ";

#[test]
fn the_server_dies_with_a_killed_test_process() {
    if std::env::var_os(CHILD_VAR).is_some() {
        // The child: starts its own server, says where, and waits to be
        // killed.
        let server = postgres::server().expect("the parent found PostgreSQL");
        let mut out = std::io::stdout().lock();
        // On a line of its own: the harness has begun the test's line.
        writeln!(
            out,
            "\n{MARK}{} {}",
            server.port(),
            server.directory().display()
        )
        .unwrap();
        out.flush().unwrap();
        drop(out);
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    if postgres::server().is_none() {
        return;
    }

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix(MARK) {
            said = Some(rest.to_owned());
            break;
        }
    }
    let said = said.expect("the child says where its server is");
    let (port, directory) = said.split_once(' ').unwrap();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let directory = PathBuf::from(directory);
    assert!(TcpStream::connect_timeout(&address, Duration::from_secs(5)).is_ok());
    assert!(directory.join("data").is_dir());

    child.kill().unwrap(); // SIGKILL: nothing of the child's runs any more.
    child.wait().unwrap();

    block_until(
        "the killed process's server is gone, and its directory",
        Duration::from_secs(30),
        || {
            if directory.exists() {
                return Err(format!("{} still exists", directory.display()));
            }
            match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
                Ok(_) => Err(format!("{address} still accepts connections")),
                Err(_) => Ok(()),
            }
        },
    );
}
