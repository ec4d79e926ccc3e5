//! Scenario files, defaults and error reports.

use std::path::{Path, PathBuf};

use super::*;
use crate::ids::CoreId;

const ORIGIN: &str = "scenarios/x.toml";

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// A valid scenario with `rest` appended (guests, policy...).
fn with(rest: &str) -> String {
    format!("duration = \"1s\"\n\n[board]\ncores = 2\nenergy_profile = \"p\"\n\n{rest}")
}

const GUEST_A: &str = "[[guests]]\nname = \"a\"\ndemand = { kind = \"batch\" }\n";

fn parse_ok(text: &str) -> Scenario {
    parse(text, Path::new(ORIGIN)).unwrap_or_else(|e| panic!("{e}\n--- in ---\n{text}"))
}

fn parse_err(text: &str) -> ScenarioError {
    match parse(text, Path::new(ORIGIN)) {
        Ok(s) => panic!("parsed but should not have: {s:?}\n--- from ---\n{text}"),
        Err(e) => e,
    }
}

/// A fresh directory for files a test needs on disk.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("vcpu-runtime-scenario-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn scenario_files_all_parse() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(scenarios_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let scenario = load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(Some(scenario.name.as_str()), path.file_stem().and_then(|s| s.to_str()), "{}", path.display());
            names.push(scenario.name);
        }
    }
    names.sort();
    for expected in ["phone-day", "phone-dual", "rt-mixed", "weights-124"] {
        assert!(names.iter().any(|n| n == expected), "scenarios/{expected}.toml missing: {names:?}");
    }
}

#[test]
fn scenario_phone_dual_is_the_default_demo() {
    let s = load(&scenarios_dir().join("phone-dual.toml")).unwrap();
    assert_eq!(s.board, Board { cores: 2, energy_profile: "phone-dual".into() });
    assert_eq!(s.policy.governor, GovernorPolicy::Consolidate);
    assert_eq!(s.duration, Nanos::from_secs(10));
    let names: Vec<&str> = s.guests.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["work", "personal"]);
    assert_eq!(s.guests[0].vcpus, 2);
    assert!(matches!(s.guests[0].demand, Some(Demand::Interactive { .. })));
    assert_eq!(s.total_vcpus(), 4);
    assert_eq!(s.guest("personal").map(|(id, _)| id), Some(VmId(1)));
}

#[test]
fn scenario_weights_124_and_rt_mixed_content() {
    let s = load(&scenarios_dir().join("weights-124.toml")).unwrap();
    assert_eq!(s.board.cores, 1);
    let weights: Vec<u32> = s.guests.iter().map(|g| g.weight).collect();
    assert_eq!(weights, [128, 256, 512]);
    assert!(s.guests.iter().all(|g| g.vcpus == 1 && g.demand == Some(Demand::Batch)));

    let s = load(&scenarios_dir().join("rt-mixed.toml")).unwrap();
    let (_, rt) = s.guest("rt").unwrap();
    assert_eq!(rt.reservation, Some(Reservation { budget: Nanos::from_millis(2), period: Nanos::from_millis(10) }));
    assert_eq!(
        rt.demand,
        Some(Demand::Periodic {
            period: Nanos::from_millis(10),
            work: Nanos::from_micros(1500),
            deadline: Nanos::from_millis(10),
            offset: Nanos::ZERO,
        })
    );

    let s = load(&scenarios_dir().join("phone-day.toml")).unwrap();
    assert_eq!(s.duration, Nanos::from_secs(24 * 3600));
    assert!(s.guests.iter().all(|g| matches!(g.demand, Some(Demand::PhoneDay { .. }))));
}

#[test]
fn scenario_defaults_apply() {
    let s = parse_ok(&with(
        "[[guests]]\nname = \"a\"\ndemand = { kind = \"periodic\", period = \"10ms\", work = \"1ms\" }\n\
         [[guests]]\nname = \"b\"\ndemand = { kind = \"interactive\", burst_mean = \"1ms\", think_mean = \"9ms\" }\n\
         [[guests]]\nname = \"c\"\ndemand = { kind = \"phone-day\" }\n",
    ));
    assert_eq!(s.name, "x", "the name defaults to the file stem");
    assert_eq!(s.description, "");
    assert_eq!(s.policy, Policy::default());
    assert_eq!(
        s.policy,
        Policy {
            timeslice: Nanos::from_millis(4),
            min_granularity: Nanos::from_micros(500),
            rt_utilization_bound_percent: 90,
            governor: GovernorPolicy::Spread,
            governor_period: Nanos::from_millis(10),
            min_migration_interval: Nanos::from_millis(1),
            util_half_life: Nanos::from_millis(32),
        }
    );
    let a = &s.guests[0];
    assert_eq!((a.vcpus, a.memory_mib, a.weight), (1, 128, 256));
    assert_eq!((a.reservation, a.affinity, &a.payload), (None, None, &Payload::None));
    assert_eq!(
        a.demand,
        Some(Demand::Periodic {
            period: Nanos::from_millis(10),
            work: Nanos::from_millis(1),
            deadline: Nanos::from_millis(10),
            offset: Nanos::ZERO
        })
    );
    assert_eq!(
        s.guests[1].demand,
        Some(Demand::Interactive { burst_mean: Nanos::from_millis(1), think_mean: Nanos::from_millis(9), seed: 0 })
    );
    assert_eq!(s.guests[2].demand, Some(Demand::PhoneDay { seed: 0, active_minutes: 240 }));
    assert_eq!(s.guests[0].allowed_cores(&s.board), CoreMask::first(2));
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn scenario_policy_and_guest_fields_are_read() {
    let s = parse_ok(&with(
        "[policy]\ntimeslice = \"6ms\"\nmin_granularity = \"1ms\"\nrt_utilization_bound_percent = 75\n\
         governor = \"race-to-idle\"\ngovernor_period = \"20ms\"\nmin_migration_interval = \"0s\"\nutil_half_life = \"8ms\"\n\n\
         [[guests]]\nname = \"img\"\nvcpus = 4\nmemory_mib = 256\nweight = 1024\naffinity = [1]\n\
         reservation = { budget = \"1ms\", period = \"5ms\" }\nkind = \"test-image\"\nimage = \"images/hello.bin\"\n",
    ));
    assert_eq!(s.policy.timeslice, Nanos::from_millis(6));
    assert_eq!(s.policy.min_granularity, Nanos::from_millis(1));
    assert_eq!(s.policy.rt_utilization_bound_percent, 75);
    assert_eq!(s.policy.governor, GovernorPolicy::RaceToIdle);
    assert_eq!(s.policy.governor_period, Nanos::from_millis(20));
    assert_eq!(s.policy.min_migration_interval, Nanos::ZERO);
    assert_eq!(s.policy.util_half_life, Nanos::from_millis(8));
    let g = &s.guests[0];
    assert_eq!((g.vcpus, g.memory_mib, g.weight), (4, 256, 1024));
    assert_eq!(g.affinity, Some(CoreMask::single(CoreId(1))));
    assert_eq!(g.reservation, Some(Reservation { budget: Nanos::from_millis(1), period: Nanos::from_millis(5) }));
    assert_eq!(g.payload, Payload::TestImage { image: "scenarios/images/hello.bin".into() });
    assert_eq!(g.demand, None, "a guest with a payload needs no demand");
    for p in GovernorPolicy::ALL {
        assert_eq!(GovernorPolicy::from_name(p.name()), Some(p));
        let s = parse_ok(&with(&format!("[policy]\ngovernor = \"{p}\"\n{GUEST_A}")));
        assert_eq!(s.policy.governor, p);
    }
}

#[test]
fn scenario_linux_paths_are_relative_to_the_file() {
    let guest =
        "[[guests]]\nname = \"linux\"\nkind = \"linux\"\nkernel = \"images/Image\"\ninitrd = \"/abs/initramfs.cpio\"\n\
                 cmdline = \"console=hvc0 quiet\"\n";
    let s = parse(&with(guest), Path::new("/srv/scen/phone.toml")).unwrap();
    assert_eq!(
        s.guests[0].payload,
        Payload::Linux {
            kernel: "/srv/scen/images/Image".into(),
            initrd: Some("/abs/initramfs.cpio".into()),
            cmdline: "console=hvc0 quiet".into(),
        }
    );
    let s = parse(&with("[[guests]]\nname = \"l\"\nkind = \"linux\"\nkernel = \"Image\"\n"), Path::new("phone.toml"))
        .unwrap();
    assert_eq!(s.guests[0].payload, Payload::Linux { kernel: "Image".into(), initrd: None, cmdline: String::new() });
}

#[test]
fn scenario_trace_demand_is_read_relative_to_the_file() {
    let dir = TempDir::new("trace-ok");
    dir.write("traces/t.csv", "time_ms,demand_percent\n0,20\n100,80\n");
    let path = dir
        .write("s.toml", &with("[[guests]]\nname = \"t\"\ndemand = { kind = \"trace\", file = \"traces/t.csv\" }\n"));
    let s = load(&path).unwrap();
    let expected_file = dir.0.join("traces/t.csv").to_str().unwrap().to_string();
    assert_eq!(
        s.guests[0].demand,
        Some(Demand::Trace { file: expected_file, points: vec![(Nanos::ZERO, 20), (Nanos::from_millis(100), 80)] })
    );
}

#[test]
fn scenario_trace_errors_name_the_csv_line() {
    let dir = TempDir::new("trace-bad");
    dir.write("t.csv", "time_ms,demand_percent\n0,20\n10,abc\n");
    let text = with("[[guests]]\nname = \"t\"\ndemand = { kind = \"trace\", file = \"t.csv\" }\n");
    let path = dir.write("s.toml", &text);
    let e = load(&path).unwrap_err();
    let csv = dir.0.join("t.csv");
    assert_eq!(e.field, "guests[0].demand.file");
    assert!(e.reason.starts_with(&format!("{}:3: ", csv.display())), "{e}");
    assert!(e.reason.contains("demand_percent must be a whole number between 0 and 100, got \"abc\""), "{e}");
    assert_eq!(e.location, Some((9, 28)), "points at the `file` key: {e}");

    let missing = with("[[guests]]\nname = \"t\"\ndemand = { kind = \"trace\", file = \"nope.csv\" }\n");
    let e = load(&dir.write("m.toml", &missing)).unwrap_err();
    assert_eq!(e.field, "guests[0].demand.file");
    assert!(e.reason.contains("nope.csv: cannot read"), "{e}");

    dir.write("empty.csv", "# nothing\n");
    let empty = with("[[guests]]\nname = \"t\"\ndemand = { kind = \"trace\", file = \"empty.csv\" }\n");
    let e = load(&dir.write("e.toml", &empty)).unwrap_err();
    assert!(e.reason.ends_with("empty.csv: no `time_ms,demand_percent` rows"), "{e}");
}

#[test]
fn scenario_error_display_names_file_line_field_and_reason() {
    let text = with(&format!("{GUEST_A}\n[[guests]]\nname = \"b\"\nweight = 0\ndemand = {{ kind = \"batch\" }}\n"));
    let e = parse_err(&text);
    assert_eq!(e.to_string(), "scenarios/x.toml:13:1: guests[1].weight: must be between 1 and 65535, got 0");
    assert_eq!(
        (e.file.as_str(), e.location, e.field.as_str(), e.reason.as_str()),
        ("scenarios/x.toml", Some((13, 1)), "guests[1].weight", "must be between 1 and 65535, got 0")
    );
    // Without a file (a scenario built in code) and without a field.
    assert_eq!(ScenarioError::new("board.cores", "too many").to_string(), "board.cores: too many");
    let e = load(Path::new("scenarios/does-not-exist.toml")).unwrap_err();
    assert!(e.to_string().starts_with("scenarios/does-not-exist.toml: cannot read: "), "{e}");
}

#[test]
fn scenario_syntax_errors_give_line_and_column() {
    let e = parse_err("duration = \"1s\"\n[board]\ncores = = 2\n");
    assert_eq!((e.location, e.field.as_str()), (Some((3, 9)), ""), "{e}");
    assert!(e.to_string().starts_with("scenarios/x.toml:3:9: "), "{e}");
    assert!(!e.reason.contains('\n'), "{e:?}");
    let e = parse_err("duration = \"1s\"\n[board]\ncores = 2\n[board]\n");
    assert_eq!(e.location.map(|l| l.0), Some(4), "{e}");
}

/// Every kind of bad input: (the TOML, the field named, a part of the reason).
#[test]
fn scenario_bad_input_names_field_and_reason() {
    let g = GUEST_A;
    let cases: Vec<(String, &str, &str)> = vec![
        // Unknown keys, at every level.
        (with(&format!("colour = 1\n{g}")), "board.colour", "unknown field `colour`"),
        (format!("duraton = \"1s\"\n{}", with(g)), "duraton", "unknown field `duraton`, expected one of"),
        (with("[[guests]]\nname = \"a\"\nweigth = 3\ndemand = { kind = \"batch\" }\n"), "guests[0].weigth", "unknown field `weigth`"),
        (with(&format!("[policy]\ntimeslize = \"4ms\"\n{g}")), "policy.timeslize", "unknown field `timeslize`"),
        (with("[[guests]]\nname = \"a\"\ndemand = { kind = \"batch\", speed = 3 }\n"), "guests[0].demand.speed", "unknown field `speed`"),
        (
            with("[[guests]]\nname = \"a\"\nreservation = { budget = \"1ms\", period = \"2ms\", prio = 1 }\ndemand = { kind = \"batch\" }\n"),
            "guests[0].reservation.prio",
            "unknown field `prio`",
        ),
        // Wrong types.
        (with("[[guests]]\nname = \"a\"\nvcpus = \"two\"\ndemand = { kind = \"batch\" }\n"), "guests[0].vcpus", "invalid type: string \"two\", expected an integer"),
        (with("[[guests]]\nname = 7\ndemand = { kind = \"batch\" }\n"), "guests[0].name", "invalid type: integer `7`, expected a string"),
        (with("[[guests]]\nname = \"a\"\naffinity = 1\ndemand = { kind = \"batch\" }\n"), "guests[0].affinity", "invalid type: integer `1`, expected a sequence"),
        ("duration = \"1s\"\nboard = 2\n".to_string(), "board", "invalid type: integer `2`"),
        (with("[[guests]]\nname = \"a\"\nweight = 1.5\ndemand = { kind = \"batch\" }\n"), "guests[0].weight", "expected an integer"),
        (with("[[guests]]\nname = \"a\"\nvcpus = 1979-05-27\ndemand = { kind = \"batch\" }\n"), "", "expected an integer"),
        // Ranges.
        (with("[[guests]]\nname = \"a\"\nvcpus = 0\ndemand = { kind = \"batch\" }\n"), "guests[0].vcpus", "must be between 1 and 64, got 0"),
        (with("[[guests]]\nname = \"a\"\nvcpus = 65\ndemand = { kind = \"batch\" }\n"), "guests[0].vcpus", "must be between 1 and 64, got 65"),
        (with("[[guests]]\nname = \"a\"\nweight = 0\ndemand = { kind = \"batch\" }\n"), "guests[0].weight", "must be between 1 and 65535, got 0"),
        (with("[[guests]]\nname = \"a\"\nweight = 65536\ndemand = { kind = \"batch\" }\n"), "guests[0].weight", "must be between 1 and 65535, got 65536"),
        (with("[[guests]]\nname = \"a\"\nmemory_mib = -1\ndemand = { kind = \"batch\" }\n"), "guests[0].memory_mib", "must be between 1 and 65536, got -1"),
        (format!("duration = \"1s\"\n[board]\ncores = 0\nenergy_profile = \"p\"\n{g}"), "board.cores", "must be between 1 and 64, got 0"),
        (format!("duration = \"1s\"\n[board]\ncores = 65\nenergy_profile = \"p\"\n{g}"), "board.cores", "must be between 1 and 64, got 65"),
        (format!("duration = \"1s\"\n[board]\ncores = 1\nenergy_profile = \"\"\n{g}"), "board.energy_profile", "must not be empty"),
        (with(&format!("[policy]\nrt_utilization_bound_percent = 101\n{g}")), "policy.rt_utilization_bound_percent", "must be between 1 and 100, got 101"),
        (with(&format!("[policy]\nmin_granularity = \"5ms\"\n{g}")), "policy.min_granularity", "at most policy.timeslice (4.000ms), got 5.000ms"),
        (with(&format!("[policy]\ntimeslice = \"0ms\"\n{g}")), "policy.timeslice", "must be longer than 0"),
        (with(&format!("[policy]\ngovernor = \"turbo\"\n{g}")), "policy.governor", "unknown governor \"turbo\", expected one of spread, hotplug, race-to-idle, consolidate"),
        // Reservations.
        (
            with("[[guests]]\nname = \"a\"\nreservation = { budget = \"3ms\", period = \"2ms\" }\ndemand = { kind = \"batch\" }\n"),
            "guests[0].reservation.budget",
            "at most the period (2.000ms), got 3.000ms",
        ),
        (
            with("[[guests]]\nname = \"a\"\nreservation = { budget = \"10us\", period = \"50us\" }\ndemand = { kind = \"batch\" }\n"),
            "guests[0].reservation.period",
            "must be at least 100.000us, got 50.000us",
        ),
        (
            with("[[guests]]\nname = \"a\"\nreservation = { budget = \"1ms\" }\ndemand = { kind = \"batch\" }\n"),
            "guests[0].reservation",
            "missing field `period`",
        ),
        // Affinity.
        (with("[[guests]]\nname = \"a\"\naffinity = [0, 2]\ndemand = { kind = \"batch\" }\n"), "guests[0].affinity[1]", "core 2 does not exist: the board has 2 cores (0..=1)"),
        (with("[[guests]]\nname = \"a\"\naffinity = [-1]\ndemand = { kind = \"batch\" }\n"), "guests[0].affinity[0]", "core -1 does not exist"),
        (with("[[guests]]\nname = \"a\"\naffinity = [1, 1]\ndemand = { kind = \"batch\" }\n"), "guests[0].affinity[1]", "core 1 is listed twice"),
        (with("[[guests]]\nname = \"a\"\naffinity = []\ndemand = { kind = \"batch\" }\n"), "guests[0].affinity", "must name at least one core"),
        // Guests.
        (with(&format!("{g}{g}")), "guests[1].name", "duplicate guest name \"a\" (also guests[0])"),
        ("guests = []\n".to_string() + &with(""), "guests", "at least one guest is required"),
        (with(""), "guests", "at least one guest is required"),
        (with("[[guests]]\nname = \"my guest\"\ndemand = { kind = \"batch\" }\n"), "guests[0].name", "may only contain letters, digits, '-' and '_', found ' '"),
        (with("[[guests]]\nname = \"\"\ndemand = { kind = \"batch\" }\n"), "guests[0].name", "must be 1 to 32 characters long, got 0"),
        (with("[[guests]]\nvcpus = 1\n"), "guests[0]", "missing field `name`"),
        (with("[[guests]]\nname = \"a\"\n"), "guests[0].demand", "required when the guest has no payload"),
        // Durations.
        (with(&format!("[policy]\ntimeslice = \"4 parsecs\"\n{g}")), "policy.timeslice", "invalid duration \"4 parsecs\": unknown unit"),
        (with(&format!("[policy]\ntimeslice = 4\n{g}")), "policy.timeslice", "invalid type: integer `4`, expected a duration string with a unit, like \"10ms\""),
        (with(&format!("[policy]\ngovernor_period = \"10\"\n{g}")), "policy.governor_period", "missing unit"),
        (format!("duration = \"-1s\"\n[board]\ncores = 1\nenergy_profile = \"p\"\n{g}"), "duration", "durations cannot be negative"),
        (format!("duration = \"0s\"\n[board]\ncores = 1\nenergy_profile = \"p\"\n{g}"), "duration", "must be longer than 0"),
        (format!("[board]\ncores = 1\nenergy_profile = \"p\"\n{g}"), "", "missing field `duration`"),
        ("duration = \"1s\"\n[board]\ncores = 1\n".to_string(), "board", "missing field `energy_profile`"),
        // Payloads.
        (with("[[guests]]\nname = \"l\"\nkind = \"linux\"\ninitrd = \"i.cpio\"\n"), "guests[0].kernel", "required for kind = \"linux\""),
        (with("[[guests]]\nname = \"l\"\nkind = \"linux\"\nkernel = \"\"\n"), "guests[0].kernel", "must not be empty"),
        (with("[[guests]]\nname = \"t\"\nkind = \"test-image\"\n"), "guests[0].image", "required for kind = \"test-image\""),
        (
            with("[[guests]]\nname = \"l\"\nkernel = \"Image\"\ndemand = { kind = \"batch\" }\n"),
            "guests[0].kernel",
            "only valid with kind = \"linux\", but this guest's kind is \"none\" (the default)",
        ),
        (with("[[guests]]\nname = \"l\"\nkind = \"linux\"\nkernel = \"I\"\nimage = \"x\"\n"), "guests[0].image", "only valid with kind = \"test-image\", but this guest's kind is \"linux\""),
        (with("[[guests]]\nname = \"l\"\nkind = \"windows\"\n"), "guests[0].kind", "unknown variant `windows`, expected one of `test-image`, `linux`, `none`"),
        // Demands.
        (with("[[guests]]\nname = \"a\"\ndemand = { kind = \"random\" }\n"), "guests[0].demand.kind", "unknown variant `random`"),
        (with("[[guests]]\nname = \"a\"\ndemand = { period = \"1ms\" }\n"), "guests[0].demand", "missing field `kind`"),
        (with("[[guests]]\nname = \"a\"\ndemand = { kind = \"periodic\", work = \"1ms\" }\n"), "guests[0].demand.period", "required for kind = \"periodic\""),
        (
            with("[[guests]]\nname = \"a\"\ndemand = { kind = \"periodic\", period = \"10ms\", work = \"1ms\", seed = 3 }\n"),
            "guests[0].demand.seed",
            "not used by kind = \"periodic\" (it takes period, work, deadline, offset)",
        ),
        (with("[[guests]]\nname = \"a\"\ndemand = { kind = \"batch\", period = \"1ms\" }\n"), "guests[0].demand.period", "not used by kind = \"batch\" (it takes no other fields)"),
        (
            with("[[guests]]\nname = \"a\"\ndemand = { kind = \"periodic\", period = \"10ms\", work = \"3ms\", deadline = \"2ms\" }\n"),
            "guests[0].demand.work",
            "must be at most the deadline (2.000ms), got 3.000ms",
        ),
        (
            with("[[guests]]\nname = \"a\"\ndemand = { kind = \"periodic\", period = \"10ms\", work = \"1ms\", deadline = \"20ms\" }\n"),
            "guests[0].demand.deadline",
            "must be at most the period (10.000ms), got 20.000ms",
        ),
        (
            with("[[guests]]\nname = \"a\"\ndemand = { kind = \"interactive\", burst_mean = \"0ms\", think_mean = \"1ms\" }\n"),
            "guests[0].demand.burst_mean",
            "must be longer than 0",
        ),
        (with("[[guests]]\nname = \"a\"\ndemand = { kind = \"phone-day\", seed = -3 }\n"), "guests[0].demand.seed", "must be between 0 and"),
        (with("[[guests]]\nname = \"a\"\ndemand = { kind = \"phone-day\", active_minutes = 1441 }\n"), "guests[0].demand.active_minutes", "must be between 0 and 1440, got 1441"),
        (with("[[guests]]\nname = \"a\"\ndemand = { kind = \"trace\" }\n"), "guests[0].demand.file", "required for kind = \"trace\""),
    ];
    for (text, field, reason) in &cases {
        let e = parse_err(text);
        let context = format!("{e}\n--- from ---\n{text}");
        assert_eq!(e.file, ORIGIN, "{context}");
        assert_eq!(e.field, *field, "{context}");
        assert!(e.reason.contains(reason), "expected {reason:?} in the reason: {context}");
        assert!(!e.reason.contains('\n'), "{context}");
        let shown = e.to_string();
        assert!(shown.starts_with(ORIGIN), "{context}");
        if !field.is_empty() {
            assert!(shown.contains(&format!(": {field}: ")), "{context}");
            let key = field.rsplit('.').next().and_then(|k| k.split('[').next()).unwrap_or_default();
            if text.contains(key) {
                assert!(e.location.is_some(), "a field in the file has a location: {context}");
            }
        }
    }
    assert!(cases.len() >= 12);
}

#[test]
fn scenario_error_locations_point_at_the_field() {
    // Unknown key: at the key.
    let e = parse_err(&with("[[guests]]\nname = \"a\"\nweigth = 3\ndemand = { kind = \"batch\" }\n"));
    assert_eq!(e.location, Some((9, 1)), "{e}");
    // Bad value: at the value.
    let e = parse_err(&with("[[guests]]\nname = \"a\"\nvcpus = \"two\"\ndemand = { kind = \"batch\" }\n"));
    assert_eq!(e.location, Some((9, 9)), "{e}");
    // Missing field of a guest: at the guest's table.
    let e = parse_err(&with("[[guests]]\nvcpus = 1\n"));
    assert_eq!(e.location, Some((7, 1)), "{e}");
    // A default that fails validation: at the closest enclosing field in the file.
    let e = parse_err(&with("[[guests]]\nname = \"a\"\n"));
    assert_eq!((e.field.as_str(), e.location), ("guests[0].demand", Some((7, 1))), "{e}");
    // A missing top-level field has no place.
    let e = parse_err("[board]\ncores = 1\nenergy_profile = \"p\"\n");
    assert_eq!(e.to_string(), "scenarios/x.toml: missing field `duration`");
}

#[test]
fn scenario_validate_checks_hand_built_scenarios() {
    let mut s = parse_ok(&with(GUEST_A));
    assert_eq!(s.validate(), Ok(()));
    s.guests[0].affinity = Some(CoreMask::single(CoreId(5)));
    let e = s.validate().unwrap_err();
    assert_eq!(e.to_string(), "guests[0].affinity: core 5 does not exist: the board has 2 cores (0..=1)");
    s.guests[0].affinity = None;
    s.guests[0].demand = None;
    assert_eq!(s.validate().unwrap_err().field, "guests[0].demand");
    s.guests[0].demand = Some(Demand::Trace { file: "t.csv".into(), points: vec![(Nanos(5), 10), (Nanos(5), 20)] });
    assert!(s.validate().unwrap_err().reason.contains("is not after"));
    s.guests[0].demand = Some(Demand::Trace { file: "t.csv".into(), points: vec![(Nanos(5), 101)] });
    assert!(s.validate().unwrap_err().reason.contains("between 0 and 100 percent"));
    s.guests.clear();
    assert_eq!(s.validate().unwrap_err().field, "guests");
}

/// The full example in docs/scenario-format.md parses, so the documentation stays true.
#[test]
fn scenario_documented_example_parses() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/scenario-format.md")).unwrap();
    // The full example is the block that starts with its name (smaller snippets come before).
    let start =
        doc.find("```toml\nname = \"example\"").expect("the example's ```toml block in docs/scenario-format.md")
            + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let s = parse(&doc[start..end], Path::new("scenarios/example.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.guests.len(), 3);
    assert!(matches!(s.guests[0].payload, Payload::Linux { .. }));
    assert!(matches!(s.guests[1].payload, Payload::TestImage { .. }));
    assert_eq!(s.guests[2].payload, Payload::None);
}
