//! The hook's hot path — parse + verify + plan — on the largest GitHub push
//! fixture, reported as ratios against baselines measured in the same run.
//!
//! `cargo bench --bench hook_path` (or `make bench`) measures; `cargo test
//! --all-targets` runs every case once and checks its result, as a smoke test.
//!
//! Why not criterion: what this bench reports are ratios (how much dearer the
//! hook path is than reading the payload once, or than the HMAC alone), and
//! criterion measures one benchmark after the other and keeps its estimates
//! to itself (files under `target/criterion`). The ratios would need a second
//! timing pass after criterion's, doubling the run time, and on a machine
//! shared with other work a burst of load during one benchmark would skew
//! every ratio that benchmark is part of. This harness instead:
//!
//! - calibrates each case to batches of about [`BATCH_TARGET`] (which also
//!   warms it up), then runs [`ROUNDS`] rounds, each timing one batch of every
//!   case back to back, starting from a different case each round;
//! - reports each case's median ns per iteration, and each ratio as the
//!   median over rounds of the ratio within a round: both sides of a ratio are
//!   measured a few milliseconds apart, so load that comes and goes affects
//!   them alike, and the median drops the rounds it hit unevenly.
//!
//! A caveat for ratios near 1: the baselines instantiate generic code (serde_json's
//! `Value` parser) in this bench crate, and that copy need not run at the
//! speed of the library's own copy. When this bench was written, `parse`
//! measured 0.91x `json_value` although it does strictly more: the same
//! `from_slice::<Value>` called from this crate, inlined or not, was ~9% slower
//! than inside `providers::parse` (`perf` shows two copies of the parser).
//! Read differences of that size as codegen, not as a change in work done.
//!
//! It needs no dependency beyond the crate's own (`hmac`, `sha2`, `hex`,
//! `http`, `serde_json`), and the whole run takes a few seconds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use redeploy_operator::api::{App, AppSpec, BuildSpec, GitSource, Service, ServiceSpec, WorkloadTarget};
use redeploy_operator::hook::event::HookEvent;
use redeploy_operator::hook::providers;
use redeploy_operator::hook::signature::{self, SignatureCheck};
use redeploy_operator::plan::{self, Modifiers, Plan};
use sha2::Sha256;

/// The largest GitHub push fixture (8.8 kB), as the hook receives it.
const BODY: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks/github/push-new-branch.json"));
const FIXTURE: &str = "github/push-new-branch.json";
/// The fixture's repository and branch.
const REPOSITORY: &str = "https://github.com/Codertocat/Hello-World";
const BRANCH: &str = "master";

const SECRET: &[u8] = b"It's a Secret to Everybody";
const APP: &str = "shop";
const NAMESPACE: &str = "shop-prod";
/// The Service that the fixture's push builds.
const MATCHING_SERVICE: &str = "web";
const QUERY: &str = "services=web";

/// How long one timed batch of a case runs.
const BATCH_TARGET: Duration = Duration::from_millis(5);
/// Rounds of one batch per case.
const ROUNDS: usize = 101;
/// The measuring stops early past this, whatever the rounds done (a heavily loaded machine).
const TIME_CAP: Duration = Duration::from_secs(40);

fn main() {
    let inputs = Inputs::new();
    let cases = cases(&inputs);
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
    if std::env::args().any(|arg| arg == "--bench") {
        measure(cases);
    } else {
        smoke(&inputs, cases);
    }
}

/// Everything the hook has in hand before the timed code runs.
struct Inputs {
    headers: HeaderMap,
    app: App,
    services_10: Vec<Service>,
    services_500: Vec<Service>,
    modifiers: Modifiers,
    /// The fixture parsed once, for the plan-only cases.
    event: HookEvent,
}

impl Inputs {
    fn new() -> Inputs {
        let mut headers = HeaderMap::new();
        let mut set = |name: &str, value: &str| {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        };
        set("Content-Type", "application/json");
        set("X-GitHub-Event", "push");
        set("X-GitHub-Delivery", "d2a1b3c4-5e6f-11ea-8e2d-0123456789ab");
        set("X-Hub-Signature-256", &format!("sha256={}", hex::encode(hmac_sha256(SECRET, BODY))));

        let mut app = App::new(APP, AppSpec::default());
        app.metadata.namespace = Some(NAMESPACE.into());
        let event = providers::parse(&headers, BODY).expect("the fixture parses");
        let modifiers = Modifiers::parse(Some(QUERY), None).expect("the query parses");
        Inputs { headers, app, services_10: services(10), services_500: services(500), modifiers, event }
    }
}

/// `count` Git-built Services of the App: `web` builds the fixture's repository
/// and branch, the others other repositories (on GitHub and GitLab, as HTTPS
/// and scp-like URLs).
fn services(count: usize) -> Vec<Service> {
    let mut services = vec![git_service(MATCHING_SERVICE, REPOSITORY)];
    services.extend((1..count).map(|i| {
        let repository = match i % 3 {
            0 => format!("https://github.com/Codertocat/service-{i:03}"),
            1 => format!("git@github.com:Codertocat/service-{i:03}.git"),
            _ => format!("https://gitlab.com/codertocat/service-{i:03}.git"),
        };
        git_service(&format!("svc-{i:03}"), &repository)
    }));
    services
}

fn git_service(name: &str, repository: &str) -> Service {
    let mut service = Service::new(
        name,
        ServiceSpec {
            app: APP.into(),
            target: WorkloadTarget { name: name.into(), ..Default::default() },
            git: Some(Box::new(GitSource {
                repository: repository.into(),
                branch: Some(BRANCH.into()),
                dockerfile: "Dockerfile".into(),
                context: ".".into(),
                secret_ref: None,
                ..Default::default()
            })),
            build: Some(Box::new(BuildSpec {
                image: format!("registry.example.com/shop/{name}"),
                ..Default::default()
            })),
            image: None,
        },
    );
    service.metadata.namespace = Some(NAMESPACE.into());
    service
}

fn hmac_sha256(secret: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// What one iteration of a case returns, for the smoke test to check (moved, never stored: size does not matter).
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Json(serde_json::Value),
    Mac(Vec<u8>),
    Event(HookEvent),
    Verified(bool),
    Plan(Plan),
}

/// One benchmarked operation.
struct Case<'a> {
    name: &'static str,
    /// Runs the operation once and returns its result.
    once: Box<dyn Fn() -> Outcome + 'a>,
    /// Runs the operation the given number of times.
    batch: Box<dyn Fn(u64) + 'a>,
}

/// A case from an operation; the loop in `batch` is compiled for that operation alone.
fn case<'a, T: 'a>(name: &'static str, run: impl Fn() -> T + Copy + 'a, outcome: fn(T) -> Outcome) -> Case<'a> {
    Case {
        name,
        once: Box::new(move || outcome(run())),
        batch: Box::new(move |iterations| {
            for _ in 0..iterations {
                black_box(run());
            }
        }),
    }
}

fn cases(inputs: &Inputs) -> Vec<Case<'_>> {
    let body = || black_box(BODY);
    let headers = || black_box(&inputs.headers);
    vec![
        case(
            "json_value",
            move || serde_json::from_slice::<serde_json::Value>(body()).expect("the fixture is JSON"),
            Outcome::Json,
        ),
        case("hmac_only", move || hmac_sha256(black_box(SECRET), body()), Outcome::Mac),
        case("parse", move || providers::parse(headers(), body()).expect("the fixture parses"), Outcome::Event),
        case(
            "verify",
            move || signature::verify(SignatureCheck::GitHubSha256, black_box(SECRET), headers(), body()).is_ok(),
            Outcome::Verified,
        ),
        case("plan_10_services", plan_only(inputs, &inputs.services_10), Outcome::Plan),
        case("plan_500_services", plan_only(inputs, &inputs.services_500), Outcome::Plan),
        case(
            "hook_path",
            move || {
                let (headers, body) = (headers(), body());
                let event = providers::parse(headers, body).expect("the fixture parses");
                signature::verify(SignatureCheck::GitHubSha256, black_box(SECRET), headers, body)
                    .expect("the signature verifies");
                let modifiers = Modifiers::parse(black_box(Some(QUERY)), None).expect("the query parses");
                plan::plan(&event, black_box(&inputs.app), black_box(&inputs.services_10), None, &modifiers)
                    .expect("the plan is not refused")
            },
            Outcome::Plan,
        ),
    ]
}

/// `plan::plan` alone, for the event parsed beforehand and the query's modifiers.
fn plan_only<'a>(inputs: &'a Inputs, services: &'a [Service]) -> impl Fn() -> Plan + Copy + 'a {
    move || {
        plan::plan(black_box(&inputs.event), black_box(&inputs.app), black_box(services), None, &inputs.modifiers)
            .expect("the plan is not refused")
    }
}

/// Runs every case once and checks that it measures what it claims to.
fn smoke(inputs: &Inputs, cases: Vec<Case<'_>>) {
    let event = &inputs.event;
    assert_eq!(event.event, "push");
    assert_eq!(event.branch.as_deref(), Some(BRANCH));
    assert!(event.repository_urls.iter().any(|url| url == REPOSITORY), "{:?}", event.repository_urls);
    assert_eq!(inputs.modifiers.services, [MATCHING_SERVICE]);
    for case in &cases {
        match (case.once)() {
            Outcome::Json(value) => assert!(value.is_object()),
            Outcome::Mac(mac) => assert_eq!(mac.len(), 32),
            Outcome::Event(parsed) => assert_eq!(&parsed, event),
            Outcome::Verified(verified) => assert!(verified, "the signature verifies"),
            Outcome::Plan(plan) => {
                let planned: Vec<&str> = plan.services.iter().map(|p| p.service.as_str()).collect();
                assert_eq!(planned, [MATCHING_SERVICE], "{}: {plan:?}", case.name);
            }
        }
        (case.batch)(2);
        println!("{} ... ok", case.name);
    }
    println!("hook_path: {} cases ran once and checked; `cargo bench --bench hook_path` measures them", cases.len());
}

fn measure(cases: Vec<Case<'_>>) {
    let started = Instant::now();
    let iterations: Vec<u64> = cases.iter().map(|case| calibrate(&*case.batch)).collect();
    // One untimed round, so every case has run right before the first timed one.
    for (case, &n) in cases.iter().zip(&iterations) {
        (case.batch)(n);
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); cases.len()];
    let measuring = Instant::now();
    for round in 0..ROUNDS {
        if measuring.elapsed() > TIME_CAP && round >= 11 {
            break;
        }
        for k in 0..cases.len() {
            let index = (round + k) % cases.len();
            let start = Instant::now();
            (cases[index].batch)(iterations[index]);
            samples[index].push(start.elapsed().as_nanos() as f64 / iterations[index] as f64);
        }
    }
    let names: Vec<&str> = cases.iter().map(|case| case.name).collect();
    report(&names, &iterations, &samples, started.elapsed());
}

/// Iterations for a batch of about [`BATCH_TARGET`], found by doubling (which warms the case up).
fn calibrate(batch: &dyn Fn(u64)) -> u64 {
    let mut iterations = 1;
    loop {
        let start = Instant::now();
        batch(iterations);
        let elapsed = start.elapsed();
        if elapsed >= BATCH_TARGET / 2 || iterations >= 1 << 30 {
            let per_iteration = elapsed.as_nanos().max(1) as f64 / iterations as f64;
            return ((BATCH_TARGET.as_nanos() as f64 / per_iteration) as u64).max(1);
        }
        iterations *= 2;
    }
}

/// Ratios printed in the summary: (numerator cases, denominator cases); several cases add up.
const RATIOS: &[(&[&str], &[&str])] = &[
    (&["parse"], &["json_value"]),
    (&["verify"], &["hmac_only"]),
    (&["plan_10_services"], &["json_value"]),
    (&["plan_500_services"], &["json_value"]),
    (&["plan_500_services"], &["plan_10_services"]),
    (&["hook_path"], &["json_value"]),
    (&["hook_path"], &["json_value", "hmac_only"]),
];

fn report(names: &[&str], iterations: &[u64], samples: &[Vec<f64>], elapsed: Duration) {
    let rounds = samples[0].len();
    println!();
    println!(
        "hook_path summary: {FIXTURE} ({} bytes), {rounds} interleaved rounds of ~{} ms batches, {:.1} s",
        BODY.len(),
        BATCH_TARGET.as_millis(),
        elapsed.as_secs_f64()
    );
    println!();
    println!("{:<24} {:>12} {:>21} {:>10}", "case", "median ns", "p25..p75 ns", "iter/batch");
    for ((name, sample), n) in names.iter().zip(samples).zip(iterations) {
        let sorted = sorted(sample.clone());
        println!(
            "{name:<24} {:>12.0} {:>21} {n:>10}",
            quantile(&sorted, 0.5),
            format!("{:.0}..{:.0}", quantile(&sorted, 0.25), quantile(&sorted, 0.75))
        );
    }
    println!();
    println!("{:<44} {:>8} {:>17}", "ratio (median of per-round ratios)", "median", "p25..p75");
    let index = |name: &str| names.iter().position(|n| *n == name).expect("a ratio names a case");
    let label = |cases: &[&str]| {
        if cases.len() == 1 { cases[0].to_owned() } else { format!("({})", cases.join(" + ")) }
    };
    for (numerator, denominator) in RATIOS {
        let sum = |cases: &[&str], round: usize| cases.iter().map(|name| samples[index(name)][round]).sum::<f64>();
        let ratios = sorted((0..rounds).map(|round| sum(numerator, round) / sum(denominator, round)).collect());
        println!(
            "{:<44} {:>7.2}x {:>17}",
            format!("{} / {}", label(numerator), label(denominator)),
            quantile(&ratios, 0.5),
            format!("{:.2}x..{:.2}x", quantile(&ratios, 0.25), quantile(&ratios, 0.75))
        );
    }
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// The `q` quantile of sorted values, by nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
