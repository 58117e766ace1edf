//! An ecosystem of workers under a coordinator: a worker that panics is restarted while
//! the others keep answering, the pool is resized without losing queued work, and the
//! numbers come from `info()`. Run with `cargo run -p foundation-beam --example ecosystem`.

use std::time::{Duration, Instant};

use foundation_beam::ecosystem::{Dispatch, Ecosystem, EcosystemSpec, Workers};
use foundation_beam::process::{Context, Process, Reply};

enum Job {
    Hash(u64, Reply<u64>),
    Crash,
}

struct Hasher;

impl Process for Hasher {
    type Message = Job;
    async fn handle(&mut self, job: Job, _: &mut Context<Job>) {
        match job {
            Job::Hash(n, reply) => {
                reply.send(n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
            }
            Job::Crash => panic!("simulated worker failure"),
        }
    }
}

#[tokio::main]
async fn main() -> foundation_beam::Result<()> {
    // Keep the demo's output readable: the default hook would print each simulated panic.
    std::panic::set_hook(Box::new(|_| {}));
    let t = Duration::from_secs(5);
    let started = Instant::now();
    let spec = EcosystemSpec::new("hashers")
        .workers(Workers::Fixed(8))
        .dispatch(Dispatch::LeastLoaded);
    let eco = Ecosystem::start(spec, |_| Hasher).await?;
    println!("started 8 workers in {:?}", started.elapsed());

    // Crash one worker three times while the ecosystem keeps serving.
    let victim = eco.workers()[3].clone();
    let mut answered = 0u64;
    for round in 0..3 {
        let mut exit = victim.monitor();
        let _ = victim.send(Job::Crash).await;
        println!("worker 3 stopped: {}", exit.wait().await);
        for n in 0..1_000u64 {
            eco.call(|r| Job::Hash(n + round * 1_000, r), t).await?;
            answered += 1;
        }
    }
    println!("answered {answered} requests meanwhile; {:?}", eco.info());

    eco.resize(2).await?;
    println!("after resize to 2: {:?} ({:?})", eco.info(), eco.health());
    eco.shutdown(t).await;
    println!("after shutdown: {:?}", eco.health());
    Ok(())
}
