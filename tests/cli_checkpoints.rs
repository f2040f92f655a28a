//! `weir checkpoints list|inspect|verify|gc` on directories left by a real
//! crash: incomplete checkpoints and stray files are found and removed,
//! referenced files never are, corrupt checkpoints fail `verify`, and the
//! directory of a running job is left alone.

mod common;

use std::process::{Command, Output};

use common::*;

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn list_verify_gc_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let words = if cfg!(debug_assertions) {
        "300000"
    } else {
        "3000000"
    };
    let crashed = Command::new(example("wordcount"))
        .args(["--words", words, "-q", "-p", "2"])
        .args([
            "-D",
            &format!("execution.checkpointing.dir={}", ckpt.display()),
        ])
        .args([
            "-D",
            "execution.checkpointing.interval=20ms",
            "-D",
            "execution.checkpointing.num-retained=5",
        ])
        .env("WEIR_FAILPOINTS", "after-metadata-write=exit@4")
        .output()
        .unwrap();
    assert_eq!(crashed.status.code(), Some(86), "{}", text(&crashed));
    let job = std::fs::read_dir(&ckpt)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stray = job.join("chk-3").join("stray.state");
    std::fs::write(&stray, b"left by a crash").unwrap();

    // list: three complete, one incomplete.
    let out = weir(&["checkpoints", "list", ckpt.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<(u64, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["checkpoint"]["id"].as_u64().unwrap(),
                e["checkpoint"]["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (1, "complete".into()),
            (2, "complete".into()),
            (3, "complete".into()),
            (4, "incomplete".into())
        ]
    );
    let human = text(&weir(&["checkpoints", "list", job.to_str().unwrap()]));
    assert!(
        human.contains("incomplete") && human.contains("complete"),
        "{human}"
    );

    // inspect shows operators, key groups and source positions.
    let out = weir(&[
        "checkpoints",
        "inspect",
        job.join("chk-3").to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("operator Count: keyed state in 64 key groups [0..63]"),
        "{t}"
    );
    assert!(t.contains("operator state 'generator-position'"), "{t}");

    // verify: fine until a bit flips.
    assert!(weir(&["checkpoints", "verify", ckpt.to_str().unwrap()])
        .status
        .success());
    let meta = job.join("chk-2/_metadata");
    let mut b = std::fs::read(&meta).unwrap();
    b[30] ^= 1;
    std::fs::write(&meta, b).unwrap();
    let out = weir(&["checkpoints", "verify", ckpt.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("CORRUPT") && text(&out).contains("chk-2"),
        "{}",
        text(&out)
    );

    // gc --dry-run deletes nothing; gc deletes exactly the orphans.
    let out = weir(&["checkpoints", "gc", ckpt.to_str().unwrap(), "--dry-run"]);
    let t = text(&out);
    assert!(
        t.contains("would delete") && t.contains("chk-4") && t.contains("stray.state"),
        "{t}"
    );
    assert!(stray.exists() && job.join("chk-4").exists());
    let out = weir(&["checkpoints", "gc", ckpt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!stray.exists() && !job.join("chk-4").exists());
    for id in [1, 3] {
        weir::runtime::checkpoint::storage::load_checkpoint(&job.join(format!("chk-{id}")))
            .unwrap();
    }
    assert!(
        job.join("chk-2/_metadata").exists(),
        "a corrupt checkpoint is reported, not collected"
    );
}

#[test]
fn gc_leaves_a_running_job_alone_and_a_job_elsewhere_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(job.join("chk-7")).unwrap();
    std::fs::create_dir_all(job.join("shared")).unwrap();
    std::fs::write(job.join("chk-7/0-0.state"), b"being written").unwrap();
    // This test process plays the running job.
    std::fs::write(job.join(".running"), std::process::id().to_string()).unwrap();
    let out = weir(&["checkpoints", "gc", dir.path().to_str().unwrap()]);
    assert!(
        text(&out).contains("skipped") && text(&out).contains("running"),
        "{}",
        text(&out)
    );
    assert!(job.join("chk-7/0-0.state").exists());

    // Locked from another machine or container: its pid says nothing here,
    // so gc leaves it and says why, unless told --force.
    let mut owner = weir::runtime::checkpoint::lock::LockOwner::this_process();
    owner.boot_id = "another-boot".into();
    owner.pid = 1;
    std::fs::write(job.join(".running"), owner.encode()).unwrap();
    let out = weir(&["checkpoints", "gc", dir.path().to_str().unwrap()]);
    assert!(
        text(&out).contains("another machine or container") && text(&out).contains("--force"),
        "{}",
        text(&out)
    );
    assert!(job.join("chk-7/0-0.state").exists());
    let out = weir(&["checkpoints", "gc", "--force", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!job.join("chk-7").exists(), "{}", text(&out));
}
