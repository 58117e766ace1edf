//! The slimmed life-cycle record (one allocation: kill flag, kill waker, exit state):
//! kills reach processes wherever they wait, on a multi-thread runtime, including a kill
//! made before the process first ran; monitors see every exit; supervised restarts start
//! a fresh incarnation that a new kill stops again.

use std::time::Duration;

use foundation_beam::process::{spawn, Context, ExitReason, Process};
use foundation_beam::supervisor::{Intensity, Restart, Strategy, SupervisorSpec};

/// Waits forever in its handler (only a kill stops it).
struct Hang;

impl Process for Hang {
    type Message = ();
    async fn handle(&mut self, _: (), _: &mut Context<()>) {
        std::future::pending::<()>().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_reach_processes_wherever_they_wait() {
    // Half are killed before they may have run at all, half while blocked in a handler.
    let handles: Vec<_> = (0..2_000).map(|_| spawn(Hang)).collect();
    for h in handles.iter().skip(1).step_by(2) {
        h.send(()).await.unwrap();
    }
    for (i, h) in handles.iter().enumerate() {
        if i % 2 == 0 {
            h.kill();
        }
    }
    tokio::task::yield_now().await;
    for (i, h) in handles.iter().enumerate() {
        if i % 2 == 1 {
            h.shutdown();
        }
    }
    for (i, h) in handles.iter().enumerate() {
        let reason = tokio::time::timeout(Duration::from_secs(10), h.monitor().wait())
            .await
            .expect("every killed process stops");
        let expected = if i % 2 == 0 {
            ExitReason::Killed
        } else {
            ExitReason::Shutdown
        };
        assert_eq!(reason, expected, "process {i}");
        assert!(!h.is_alive());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_child_can_be_killed_again() {
    let mut spec = SupervisorSpec::new("restarts", Strategy::OneForOne).intensity(Intensity {
        max_restarts: 100,
        period: Duration::from_secs(60),
    });
    let child = spec.child("hang", Restart::Permanent, Default::default(), || Hang);
    let sup = spec.start();
    for round in 0..5 {
        child.send(()).await.unwrap();
        let mut monitor = child.monitor();
        child.kill();
        let reason = tokio::time::timeout(Duration::from_secs(10), monitor.wait())
            .await
            .expect("the kill stops the current incarnation");
        assert_eq!(reason, ExitReason::Killed, "round {round}");
        // The supervisor restarts it: a new incarnation that is alive again.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !child.is_alive() || sup.restarts() < round + 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("restarted");
    }
    let info = child.info();
    assert!(info.alive);
    assert_eq!(info.name.as_deref(), Some("hang"));
    sup.shutdown(Duration::from_secs(1)).await;
    assert!(!child.is_alive());
}
