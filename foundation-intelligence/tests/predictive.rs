//! Predictive scaling on synthetic load traces (paused time): a rising trend makes it
//! scale an ecosystem up before the load reaches the current capacity; flat noise makes
//! it do nothing.

use std::sync::Arc;
use std::time::Duration;

use foundation_intelligence::beam::ecosystem::{Ecosystem, EcosystemSpec, Workers};
use foundation_intelligence::beam::{Context, Process};
use foundation_intelligence::predictive::{
    Action, Holt, HoltSettings, Planner, PredictiveScaler, Scalable, ScalingPolicy,
};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

struct Idle;
impl Process for Idle {
    type Message = ();
    async fn handle(&mut self, _: (), _: &mut Context<()>) {}
}

/// Each worker handles 100 units of load; planned at 75 % → 75 per worker.
fn policy() -> ScalingPolicy {
    ScalingPolicy {
        capacity_per_unit: 100.0,
        target_utilization: 0.75,
        min_units: 1,
        max_units: 32,
        horizon: 5,
        confidence: 0.85,
        cooldown: Duration::from_secs(10),
        scale_down_cooldown: Duration::from_secs(20),
        min_history: 8,
        holt: HoltSettings::default(),
    }
}

#[test]
fn holt_tracks_a_linear_trend_and_widens_its_interval_with_the_horizon() {
    let mut h = Holt::new(HoltSettings::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for t in 0..200 {
        h.observe(50.0 + 2.0 * f64::from(t) + normal(&mut rng));
    }
    let f1 = h.forecast(1).unwrap();
    let f10 = h.forecast(10).unwrap();
    assert!((f1.mean - 450.0).abs() < 5.0, "{f1:?}");
    assert!((f10.mean - 468.0).abs() < 8.0, "{f10:?}");
    assert!(f10.std_dev > f1.std_dev);
    let (lo, hi) = f10.interval(0.85);
    assert!(lo < f10.mean && f10.mean < hi);
}

#[tokio::test(start_paused = true)]
async fn scales_up_an_ecosystem_ahead_of_a_rising_trend() {
    let spec = EcosystemSpec::new("predicted").workers(Workers::Fixed(2));
    let eco = Arc::new(Ecosystem::start(spec, |_| Idle).await.unwrap());
    // Forecast 10 readings (10 s) ahead.
    let policy = ScalingPolicy {
        horizon: 10,
        ..policy()
    };
    let mut scaler = PredictiveScaler::new("predicted", eco.clone(), policy).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut first_up = None;
    // Load rises 3 per second from 60; 2 workers hold 150, reached at t = 30 s.
    for t in 0..40u32 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let load = 60.0 + 3.0 * f64::from(t) + 3.0 * normal(&mut rng);
        let d = scaler.observe(load, Instant::now()).await.unwrap();
        if let Action::ScaleUp { from, to } = d.action {
            println!(
                "t={t}s load {load:.1}: scale up {from} -> {to} with confidence {:.3}",
                d.confidence_up
            );
            assert!(d.confidence_up >= 0.85);
            first_up.get_or_insert((t, load, from, to));
        }
    }
    let (t, load, from, to) = first_up.expect("scaled up");
    assert_eq!(from, 2);
    assert!(to > from);
    let capacity = from as f64 * 75.0;
    // The trend reaches the capacity at t = 30 s; the scaler must act well before.
    println!(
        "first scale-up at t={t}s (load {load:.1}); the trend reaches capacity {capacity} at t=30s"
    );
    assert!(
        t <= 27 && load < capacity,
        "scaled up at t={t}s with load {load:.1}: not ahead of the trend (capacity {capacity} at t=30s)"
    );
    assert!(eco.units() > 2, "the ecosystem was resized");
    eco.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn does_nothing_on_flat_noise() {
    let mut actions = 0;
    let mut max_conf: f64 = 0.0;
    let start = Instant::now();
    for seed in 0..20 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut planner = Planner::new(policy()).unwrap();
        for t in 0..600u64 {
            // Flat at 110 with noise (sd 8): 2 workers (150) fit, 1 worker (75) does not.
            let load = 110.0 + 8.0 * normal(&mut rng);
            let d = planner.observe(load, 2, start + Duration::from_secs(t));
            if d.action != Action::Warmup {
                max_conf = max_conf.max(d.confidence_up.max(d.confidence_down));
            }
            if matches!(d.action, Action::ScaleUp { .. } | Action::ScaleDown { .. }) {
                actions += 1;
            }
        }
    }
    println!(
        "flat noise, 20 seeds x 600 readings: {actions} actions, highest confidence {max_conf:.3}"
    );
    assert_eq!(actions, 0);
}

#[test]
fn scales_down_a_falling_load_and_respects_the_cooldown() {
    let mut planner = Planner::new(policy()).unwrap();
    let start = Instant::now();
    let mut units = 8usize;
    let mut times = Vec::new();
    for t in 0..60u64 {
        let load = (500.0 - 10.0 * t as f64).max(20.0);
        let d = planner.observe(load, units, start + Duration::from_secs(t));
        if let Action::ScaleDown { from, to } = d.action {
            assert_eq!(from, units);
            assert!(to < from && to >= 1);
            units = to;
            times.push(t);
        }
    }
    assert!(units < 8, "scaled down");
    assert!(times.len() >= 2, "{times:?}");
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= 20,
            "scale-down cooldown respected: {times:?}"
        );
    }
}

#[test]
fn invalid_policies_are_refused() {
    let bad = ScalingPolicy {
        capacity_per_unit: 0.0,
        ..policy()
    };
    assert!(Planner::new(bad).is_err());
    let bad = ScalingPolicy {
        confidence: 1.2,
        ..policy()
    };
    assert!(Planner::new(bad).is_err());
}
