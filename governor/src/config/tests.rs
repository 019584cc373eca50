use std::time::Duration;

use super::*;

fn error(text: &str) -> String {
    Config::parse(text).unwrap_err().0
}

/// The limits `config` gives the dependency `name`.
fn limits_of(config: &Config, name: &str) -> Limits {
    config
        .ledger
        .dependencies
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, limits)| limits.clone())
        .unwrap_or_else(|| panic!("no dependency {name:?}"))
}

#[test]
fn the_embedded_config_is_the_documented_one() {
    let config = Config::embedded();
    assert_eq!(config.server.listen, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(config.ledger.defaults, Limits::default());
    assert!(config.ledger.allow_unknown_dependencies);
    assert_eq!(config.ledger.max_dependencies, 1024);
    assert_eq!(config.ledger.max_waiters, 8192);
    assert_eq!(config.ledger.max_session_pending, 1024);
    assert_eq!(config.server.max_calls, 8192);
    assert_eq!(config.server.max_connections, 256);
    assert_eq!(Config::parse("").unwrap(), config);
}

#[test]
fn max_session_pending_is_read_and_checked() {
    let config = Config::parse("[limits]\nmax_session_pending = 7\n").unwrap();
    assert_eq!(config.ledger.max_session_pending, 7);
    for bad in ["0", "1000001"] {
        let error = Config::parse(&format!("[limits]\nmax_session_pending = {bad}\n")).unwrap_err();
        assert!(
            error
                .0
                .starts_with("limits.max_session_pending: must be between 1 and 1000000"),
            "{error}"
        );
    }
}

#[test]
fn dependencies_inherit_every_key_they_leave_out() {
    let config = Config::parse(
        r#"
        [defaults]
        max_queue = 9
        retry_budget = { ratio = 0.5, min_per_second = 3, ttl = "20s" }
        [dependencies.payments]
        max_concurrency = 8
        max_wait = "250ms"
        retry_budget = { ratio = 0.1 }
        [dependencies."db:5432"]
        "#,
    )
    .unwrap();
    let deps = &config.ledger.dependencies;
    let (name, payments) = &deps.iter().find(|(n, _)| n == "payments").unwrap();
    assert_eq!(name, "payments");
    assert_eq!(payments.max_concurrency(), 8);
    assert_eq!(payments.max_queue(), 9);
    assert_eq!(payments.max_wait(), Duration::from_millis(250));
    assert_eq!(payments.lease_ttl(), Duration::from_secs(30));
    let budget = payments.retry_budget();
    assert_eq!(
        (budget.ratio, budget.min_per_second, budget.ttl),
        (0.1, 3, Duration::from_secs(20))
    );
    let (_, db) = &deps.iter().find(|(n, _)| n == "db:5432").unwrap();
    assert_eq!(db, &config.ledger.defaults);
}

#[test]
fn errors_name_the_key() {
    assert!(
        error("[dependencies.payments]\nmax_concurrency = 0")
            .starts_with("dependencies.payments.max_concurrency:")
    );
    assert!(error("[defaults]\nlease_ttl = \"1ms\"").starts_with("defaults.lease_ttl:"));
    assert!(
        error("[dependencies.payments]\nretry_budget = { ratio = -1 }")
            .starts_with("dependencies.payments.retry_budget.ratio:")
    );
    assert!(error("[server]\nlisten = \"localhost\"").starts_with("server.listen:"));
    assert!(error("[limits]\nmax_dependencies = 0").starts_with("limits.max_dependencies:"));
    assert!(error("[dependencies.\"bad name\"]").contains("dependencies.\"bad name\""));
    assert!(
        error("[limits]\nmax_dependencies = 1\n[dependencies.a]\n[dependencies.b]")
            .starts_with("dependencies:")
    );
    // Parse errors from the TOML reader point at the key too.
    let unknown = error("[defaults]\nmax_concurency = 3");
    assert!(unknown.contains("max_concurency"), "{unknown}");
    let bad_duration = error("[defaults]\nmax_wait = \"soon\"");
    assert!(
        bad_duration.contains("max_wait") && bad_duration.contains("250ms"),
        "{bad_duration}"
    );
    let wrong_type = error("[defaults]\nmax_queue = \"ten\"");
    assert!(wrong_type.contains("max_queue"), "{wrong_type}");
}

#[test]
fn server_settings_parse_and_admin_listen_can_be_off() {
    let config = Config::parse(
        r#"
        [server]
        listen = "0.0.0.0:7000"
        uds = "/run/governor/governor.sock"
        admin_listen = "127.0.0.1:9464"
        shutdown_grace = "3s"
        "#,
    )
    .unwrap();
    assert_eq!(config.server.listen.port(), 7000);
    assert_eq!(
        config.server.uds.as_deref(),
        Some(Path::new("/run/governor/governor.sock"))
    );
    assert_eq!(config.server.admin_listen.unwrap().port(), 9464);
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(3));
    let off = Config::parse("[server]\nadmin_listen = \"off\"").unwrap();
    assert_eq!(off.server.admin_listen, None);
}

#[test]
fn adaptive_limits_inherit_key_by_key_and_can_be_turned_off() {
    use crate::ledger::limit::Algorithm;
    let config = Config::parse(
        r#"
        [defaults.adaptive]
        algorithm = "vegas"
        min_limit = 3
        window = "250ms"
        [dependencies.search]
        max_concurrency = 200
        [dependencies.search.adaptive]
        algorithm = "gradient"
        initial_limit = 32
        shadow = true
        [dependencies.ledger]
        adaptive = { algorithm = "static" }
        [dependencies.cache]
        "#,
    )
    .unwrap();
    let find = |name: &str| limits_of(&config, name);
    let search = find("search");
    let adaptive = search.adaptive().unwrap();
    assert_eq!(adaptive.algorithm(), Algorithm::Gradient);
    assert_eq!(
        (adaptive.min_limit(), adaptive.initial_limit()),
        (3, 32),
        "min_limit inherited, initial_limit its own"
    );
    assert_eq!(adaptive.window(), Duration::from_millis(250));
    assert!(adaptive.shadow());
    assert_eq!(find("ledger").adaptive(), None);
    let cache = find("cache");
    assert_eq!(cache.adaptive().unwrap().algorithm(), Algorithm::Vegas);
    assert_eq!(
        config.ledger.defaults.adaptive().unwrap().min_limit(),
        3,
        "unconfigured dependencies get the defaults' adaptive limit too"
    );
    // Off by default.
    assert_eq!(Config::embedded().ledger.defaults.adaptive(), None);
}

#[test]
fn adaptive_errors_name_the_key() {
    let unknown = error("[dependencies.search.adaptive]\nalgorithm = \"bbr\"");
    assert!(
        unknown.starts_with("dependencies.search.adaptive.algorithm:") && unknown.contains("bbr"),
        "{unknown}"
    );
    let key = error("[defaults.adaptive]\nwindw = \"1s\"");
    assert!(key.contains("windw"), "{key}");
    let min = error("[dependencies.db]\nmax_concurrency = 4\nadaptive = { min_limit = 8 }");
    assert!(
        min.starts_with("dependencies.db.adaptive.min_limit:"),
        "{min}"
    );
    let tolerance = error("[defaults.adaptive]\ntolerance = 0.5");
    assert!(
        tolerance.starts_with("defaults.adaptive.tolerance:"),
        "{tolerance}"
    );
}

#[test]
fn the_admin_listener_is_on_by_default_on_loopback() {
    let expected = Some("127.0.0.1:9464".parse().unwrap());
    assert_eq!(Config::embedded().server.admin_listen, expected);
    assert_eq!(Config::parse("").unwrap().server.admin_listen, expected);
    let error = Config::parse("[server]\nadmin_listen = \"9464\"").unwrap_err();
    assert!(error.0.starts_with("server.admin_listen: "), "{error}");
}

#[test]
fn idle_ttl_is_read_and_bounded() {
    assert_eq!(Config::embedded().ledger.idle_ttl, Duration::from_secs(300));
    let config = Config::parse("[limits]\nidle_ttl = \"90s\"").unwrap();
    assert_eq!(config.ledger.idle_ttl, Duration::from_secs(90));
    for bad in ["\"0s\"", "\"25h\"", "\"soon\"", "5"] {
        let error = error(&format!("[limits]\nidle_ttl = {bad}"));
        assert!(error.contains("idle_ttl"), "{bad}: {error}");
    }
    assert!(
        error("[limits]\nidle_ttl = \"500ms\"")
            .starts_with("limits.idle_ttl: must be between 1s and 24h")
    );
}

#[test]
fn an_empty_or_comment_only_file_is_refused_saying_so() {
    let dir = std::env::temp_dir().join(format!("governor-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("governor.toml");
    std::fs::write(&path, " \n\n").unwrap();
    let empty = Config::load(&path).unwrap_err().0;
    assert!(
        empty.contains("governor.toml: the file is empty"),
        "{empty}"
    );
    std::fs::write(&path, "# [defaults]\n# max_concurrency = 4\n").unwrap();
    let comments = Config::load(&path).unwrap_err().0;
    assert!(comments.contains("has no section"), "{comments}");
    std::fs::write(&path, "[limits]\n").unwrap();
    assert!(Config::load(&path).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn listener_roles_default_to_loopback_without_health_listener_or_token() {
    let config = Config::embedded();
    assert!(config.server.listen.ip().is_loopback());
    assert_eq!(config.server.control_plane, ControlPlane::All);
    assert_eq!(config.server.health_listen, None);
    assert_eq!(config.server.admin_token, None);
    assert!(config.server.uds_peers.is_open());
    assert_eq!(config.ledger.max_dependencies_per_peer, 128);
}

#[test]
fn listener_role_keys_parse() {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "t0ken-from-a-secret\n").unwrap();
    let config = Config::parse(&format!(
        r#"
        [server]
        health_listen = "0.0.0.0:50052"
        control_plane = "uds"
        admin_token_file = "{}"
        uds_allowed_uids = [0, 65532]
        uds_allowed_gids = [1000]
        [limits]
        max_dependencies_per_peer = 7
        "#,
        token.path().display()
    ))
    .unwrap();
    let server = &config.server;
    assert_eq!(server.health_listen, Some("0.0.0.0:50052".parse().unwrap()));
    assert_eq!(server.control_plane, ControlPlane::UnixSocket);
    assert_eq!(server.admin_token_file.as_deref(), Some(token.path()));
    let read = server.admin_token.as_ref().unwrap();
    assert!(read.matches(b"t0ken-from-a-secret") && !read.matches(b"t0ken-from-a-secret\n"));
    assert_eq!(server.uds_peers.uids, vec![0, 65532]);
    assert_eq!(server.uds_peers.gids, vec![1000]);
    assert_eq!(config.ledger.max_dependencies_per_peer, 7);
    let off = Config::parse("[server]\nhealth_listen = \"off\"").unwrap();
    assert_eq!(off.server.health_listen, None);
    for value in ["all", "off"] {
        Config::parse(&format!("[server]\ncontrol_plane = \"{value}\"")).unwrap();
    }
}

#[test]
fn bad_listener_role_values_name_their_key() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let cases = [
        (
            "[server]\nhealth_listen = \"localhost\"",
            "server.health_listen:",
        ),
        ("[server]\nhealth_listen = 50052", "health_listen"),
        (
            "[server]\nlisten = \"127.0.0.1:7000\"\nhealth_listen = \"127.0.0.1:7000\"",
            "server.health_listen:",
        ),
        (
            "[server]\nadmin_listen = \"127.0.0.1:7001\"\nhealth_listen = \"127.0.0.1:7001\"",
            "server.health_listen:",
        ),
        ("[server]\ncontrol_plane = \"tcp\"", "server.control_plane:"),
        (
            "[server]\nadmin_token_file = \"\"",
            "server.admin_token_file:",
        ),
        (
            "[server]\nadmin_token_file = \"/nonexistent/governor-token\"",
            "server.admin_token_file:",
        ),
        ("[server]\nuds_allowed_uids = [-1]", "uds_allowed_uids"),
        ("[server]\nuds_allowed_gids = \"1000\"", "uds_allowed_gids"),
        (
            "[limits]\nmax_dependencies_per_peer = 0",
            "limits.max_dependencies_per_peer:",
        ),
        (
            "[limits]\nmax_dependencies_per_peer = -3",
            "max_dependencies_per_peer",
        ),
    ];
    for (text, key) in cases {
        let message = error(text);
        assert!(message.contains(key), "{text:?} gave {message:?}");
    }
    let message = error(&format!(
        "[server]\nadmin_token_file = \"{}\"",
        empty.path().display()
    ));
    assert!(
        message.starts_with("server.admin_token_file:") && message.contains("empty"),
        "{message}"
    );
}

#[test]
fn connection_limits_are_read_and_bounded() {
    let embedded = Config::embedded().server;
    assert_eq!(embedded.idle_connection_timeout, Duration::from_secs(300));
    assert_eq!(embedded.handshake_timeout, Duration::from_secs(10));
    let config = Config::parse(
        "[server]\nmax_connections = 10\nmax_calls = 20\nidle_connection_timeout = \"2s\"\nhandshake_timeout = \"1s\"",
    )
    .unwrap()
    .server;
    assert_eq!(
        (config.max_connections, config.max_calls),
        (10, 20),
        "{config:?}"
    );
    assert_eq!(config.idle_connection_timeout, Duration::from_secs(2));
    assert_eq!(config.handshake_timeout, Duration::from_secs(1));
    for (key, value, message) in [
        (
            "max_connections",
            "0",
            "must be between 1 and 1000000, got 0",
        ),
        ("max_calls", "0", "must be between 1 and 10000000, got 0"),
        (
            "idle_connection_timeout",
            "\"10ms\"",
            "must be between 100ms and 24h, got 10ms",
        ),
        (
            "handshake_timeout",
            "\"1h\"",
            "must be between 100ms and 5m, got 1h",
        ),
    ] {
        let error = error(&format!("[server]\n{key} = {value}"));
        assert_eq!(error, format!("server.{key}: {message}"));
    }
    assert!(error("[server]\nmax_calls = -1").contains("max_calls"));
}

#[test]
fn pressure_settings_inherit_and_name_the_key_when_wrong() {
    let config = Config::parse(
        r#"
        [defaults]
        elevated_at = 0.8
        [dependencies.api]
        degrade_at = "elevated"
        [dependencies.db]
        elevated_at = 1.0
        "#,
    )
    .unwrap();
    assert_eq!(config.ledger.defaults.elevated_at(), 0.8);
    assert_eq!(config.ledger.defaults.degrade_at(), DegradeAt::Saturated);
    let limits = |name: &str| limits_of(&config, name);
    assert_eq!(limits("api").elevated_at(), 0.8, "inherited");
    assert_eq!(limits("api").degrade_at(), DegradeAt::Elevated);
    assert_eq!(limits("db").elevated_at(), 1.0);
    assert_eq!(limits("db").degrade_at(), DegradeAt::Saturated);
    // The embedded defaults are the ledger's built-in ones.
    let embedded = Config::embedded().ledger.defaults;
    assert_eq!(embedded.elevated_at(), crate::ledger::ELEVATED_AT);
    assert_eq!(embedded.degrade_at(), DegradeAt::Saturated);

    for bad in ["0", "0.0", "-1", "1.5"] {
        assert_eq!(
            error(&format!("[dependencies.api]\nelevated_at = {bad}\n")),
            format!(
                "dependencies.api.elevated_at: must be in (0, 1], got {}",
                bad.parse::<f64>().unwrap()
            ),
        );
    }
    assert!(
        error("[defaults]\nelevated_at = nan\n")
            .starts_with("defaults.elevated_at: must be in (0, 1]")
    );
    let wrong = error("[dependencies.api]\ndegrade_at = \"never\"\n");
    assert!(
        wrong.contains("degrade_at = \"never\"")
            && wrong.contains("unknown variant `never`, expected `saturated` or `elevated`"),
        "{wrong}"
    );
    let wrong = error("[defaults]\ndegrade_at = 1\n");
    assert!(wrong.contains("degrade_at"), "{wrong}");
}

#[test]
fn rate_limits_parse_inherit_turn_off_and_name_the_key_when_wrong() {
    let config = Config::parse(
        r#"
        [defaults]
        rate = { per_second = 100, burst = 20 }
        [dependencies.api]
        rate = { per_second = 50, burst = 10 }
        [dependencies.paced]
        rate = { per_second = 2.5 }
        [dependencies.free]
        rate = { per_second = 0 }
        [dependencies.db]
        max_concurrency = 8
        "#,
    )
    .unwrap();
    let rate = |name: &str| {
        limits_of(&config, name)
            .rate()
            .map(|r| (r.per_second(), r.burst()))
    };
    assert_eq!(rate("api"), Some((50.0, 10)));
    assert_eq!(rate("paced"), Some((2.5, 1)), "burst defaults to 1");
    assert_eq!(rate("free"), None, "per_second = 0 turns it off");
    assert_eq!(rate("db"), Some((100.0, 20)), "inherited from [defaults]");
    assert_eq!(Config::embedded().ledger.defaults.rate(), None);

    assert_eq!(
        error("[dependencies.api]\nrate = { per_second = -1 }\n"),
        "dependencies.api.rate.per_second: must be a number in [0.001, 1000000], got -1"
    );
    assert_eq!(
        error("[dependencies.api]\nrate = { per_second = 10, burst = 0 }\n"),
        "dependencies.api.rate.burst: must be between 1 and 1000000, got 0"
    );
    let wrong = error("[dependencies.api]\nrate = { per_second = 10, bust = 3 }\n");
    assert!(wrong.contains("unknown field `bust`"), "{wrong}");
    let wrong = error("[dependencies.api]\nrate = { burst = 3 }\n");
    assert!(wrong.contains("missing field `per_second`"), "{wrong}");

    let tenants =
        Config::parse("[dependencies.api]\ntenant_rate = { per_second = 10, burst = 2 }\n")
            .unwrap();
    let limits = &tenants.ledger.dependencies[0].1;
    assert_eq!(
        limits.tenant_rate().map(|r| (r.per_second(), r.burst())),
        Some((10.0, 2))
    );
    assert_eq!(limits.rate(), None, "the two are independent");
    assert_eq!(
        error("[dependencies.api]\ntenant_rate = { per_second = 1e9 }\n"),
        "dependencies.api.tenant_rate.per_second: must be a number in [0.001, 1000000], got 1000000000"
    );
}

#[test]
fn fairness_tables_parse_inherit_and_name_their_bad_keys() {
    let config = Config::parse(
        r#"
[defaults.fairness]
by = "tenant"
[dependencies.payments.fairness]
by = "tenant_route"
weights = { checkout = 4, batch = 1 }
default_weight = 2
max_tenants = 64
[dependencies.plain]
max_concurrency = 3
[dependencies.off.fairness]
by = "none"
"#,
    )
    .unwrap();
    let limits = |name: &str| limits_of(&config, name);
    let payments = limits("payments");
    let fair = payments.fairness().unwrap();
    assert_eq!(fair.by(), FairBy::TenantRoute);
    assert_eq!(fair.weight_of("checkout"), (4, true));
    assert_eq!(fair.weight_of("anyone"), (2, false));
    assert_eq!(fair.max_tenants(), 64);
    // Inherited from [defaults] whole, with the built-in defaults.
    let plain = limits("plain");
    let inherited = plain.fairness().unwrap();
    assert_eq!(inherited.by(), FairBy::Tenant);
    assert_eq!(inherited.weight_of("x"), (1, false));
    assert_eq!(inherited.max_tenants(), ledger::DEFAULT_MAX_TENANTS);
    assert_eq!(limits("off").fairness(), None, "by = none turns it off");

    assert_eq!(
        error("[dependencies.p.fairness]\nby = \"tenant\"\nweights = { x = 0 }\n"),
        "dependencies.p.fairness.weights: tenant \"x\": must be between 1 and 1000, got 0"
    );
    assert_eq!(
        error("[dependencies.p.fairness]\nby = \"tenant\"\ndefault_weight = 1001\n"),
        "dependencies.p.fairness.default_weight: must be between 1 and 1000, got 1001"
    );
    assert_eq!(
        error("[dependencies.p.fairness]\nby = \"tenant\"\nmax_tenants = 0\n"),
        "dependencies.p.fairness.max_tenants: must be between 1 and 100000, got 0"
    );
    assert_eq!(
        error(
            "[dependencies.p.fairness]\nby = \"tenant\"\nmax_tenants = 1\nweights = { a = 1, b = 1 }\n"
        ),
        "dependencies.p.fairness.weights: names 2 tenants, more than max_tenants (1)"
    );
    let long = "x".repeat(129);
    assert_eq!(
        error(&format!(
            "[dependencies.p.fairness]\nby = \"tenant\"\nweights = {{ {long} = 1 }}\n"
        )),
        format!(
            "dependencies.p.fairness.weights: tenant {long:?} must be at most 128 bytes, got 129"
        )
    );
    let wrong = error("[dependencies.p.fairness]\nby = \"route\"\n");
    // serde's own message, with the line and the key it is on.
    assert!(
        wrong.contains("by = \"route\"") && wrong.contains("unknown variant `route`"),
        "{wrong}"
    );
    // A table without `by` shares by tenant.
    let implied = Config::parse("[dependencies.p.fairness]\nweights = { a = 2 }\n").unwrap();
    let fair = implied.ledger.dependencies[0]
        .1
        .fairness()
        .cloned()
        .unwrap();
    assert_eq!(
        (fair.by(), fair.weight_of("a")),
        (FairBy::Tenant, (2, true))
    );
}

const FLEET: &str = "[fleet]\nredis = \"redis://:secret@127.0.0.1:6379/0\"\n";
const PAYMENTS_FLEET: &str =
    "[dependencies.payments.fleet]\nmax_concurrency = 200\nfallback_share = 4\n";

#[test]
fn a_fleet_section_and_a_fleet_limit_are_read_with_their_defaults() {
    assert_eq!(Config::embedded().fleet, None);
    let config = Config::parse(&format!("{FLEET}{PAYMENTS_FLEET}")).unwrap();
    let fleet = config.fleet.as_ref().unwrap();
    assert_eq!(
        fleet.store,
        FleetStore::Redis("redis://:secret@127.0.0.1:6379/0".into())
    );
    assert_eq!(fleet.share_ttl, Duration::from_secs(10));
    assert_eq!(fleet.safety_margin, Duration::from_secs(2), "share_ttl / 5");
    assert_eq!(fleet.renew_interval(), Duration::from_secs(10) / 3);
    assert_eq!(&*fleet.namespace, "governor");
    assert!(
        fleet
            .instance
            .ends_with(&format!("-{}", std::process::id())),
        "hostname-pid: {}",
        fleet.instance
    );
    let limit = limits_of(&config, "payments").fleet().unwrap();
    assert_eq!((limit.max_concurrency(), limit.fallback_share()), (200, 4));
    // The password never reaches Debug output (logs print the store so).
    let debug = format!("{config:?}");
    assert!(!debug.contains("secret"), "{debug}");
    assert!(debug.contains("redis://redacted@127.0.0.1:6379"), "{debug}");

    let cluster = Config::parse(
        "[fleet]\nredis_cluster = [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]\n\
         share_ttl = \"3s\"\nsafety_margin = \"500ms\"\ninstance = \"pod-a\"\nnamespace = \"shop\"\n",
    )
    .unwrap()
    .fleet
    .unwrap();
    assert!(matches!(&cluster.store, FleetStore::Cluster(nodes) if nodes.len() == 2));
    assert_eq!(
        (cluster.share_ttl, cluster.safety_margin),
        (Duration::from_secs(3), Duration::from_millis(500))
    );
    assert_eq!((&*cluster.instance, &*cluster.namespace), ("pod-a", "shop"));
}

#[test]
fn fleet_mistakes_name_their_key() {
    for (text, key) in [
        (
            PAYMENTS_FLEET.to_owned(),
            "dependencies.payments.fleet: needs a [fleet] section",
        ),
        (
            format!(
                "{FLEET}[dependencies.payments.fleet]\nmax_concurrency = 2\nfallback_share = 3\n"
            ),
            "dependencies.payments.fleet.fallback_share: must be at most",
        ),
        (
            format!(
                "{FLEET}[dependencies.payments.fleet]\nmax_concurrency = 0\nfallback_share = 0\n"
            ),
            "dependencies.payments.fleet.max_concurrency: must be between 1",
        ),
        (
            format!("{FLEET}[dependencies.payments.fleet]\nmax_concurrency = 2\n"),
            "missing field `fallback_share`",
        ),
        (
            format!("{FLEET}[defaults.fleet]\nmax_concurrency = 2\nfallback_share = 0\n"),
            "defaults.fleet: ",
        ),
        (
            "[fleet]\nredis = \"redis://a\"\nredis_cluster = [\"redis://b\"]\n".to_owned(),
            "fleet: set redis or redis_cluster, not both",
        ),
        (
            "[fleet]\nshare_ttl = \"3s\"\n".to_owned(),
            "fleet: needs redis",
        ),
        (
            "[fleet]\nredis_cluster = []\n".to_owned(),
            "fleet.redis_cluster: must name at least one node",
        ),
        (
            "[fleet]\nredis = \"http://x\"\n".to_owned(),
            "fleet.redis: invalid URL",
        ),
        (
            format!("{FLEET}share_ttl = \"500ms\"\n"),
            "fleet.share_ttl: must be between 1s and 1h",
        ),
        (
            format!("{FLEET}share_ttl = \"4s\"\nsafety_margin = \"2s\"\n"),
            "fleet.safety_margin: must be less than half",
        ),
        (format!("{FLEET}instance = \"pod a\"\n"), "fleet.instance: "),
        (
            format!("{FLEET}namespace = \"{{x}}\"\n"),
            "fleet.namespace: ",
        ),
        (
            format!("{FLEET}password_file = \"/nonexistent/x\"\n"),
            "fleet.password_file: cannot read",
        ),
    ] {
        let error = error(&text);
        assert!(error.contains(key), "{text:?}: {error}");
    }
}

#[test]
fn a_password_file_is_read_trimmed_and_bounded() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"s3cret\n").unwrap();
    let config = Config::parse(&format!(
        "{FLEET}password_file = \"{}\"\n",
        file.path().display()
    ))
    .unwrap();
    assert_eq!(config.fleet.unwrap().password.as_deref(), Some("s3cret"));
    let error = error(&format!("{FLEET}password_file = \"/dev/zero\"\n"));
    assert!(
        error.contains("fleet.password_file: cannot read /dev/zero: longer than 4096 bytes"),
        "{error}"
    );
}

#[test]
fn store_urls_lose_their_credentials_in_logs() {
    use super::redact_url;
    assert_eq!(
        redact_url("redis://:pw@h:6379/0"),
        "redis://redacted@h:6379/0"
    );
    assert_eq!(
        redact_url("redis://user:pw@h:6379"),
        "redis://redacted@h:6379"
    );
    assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
    let unix = redact_url("redis+unix:///run/redis.sock?db=1&pass=pw&user=u");
    assert!(!unix.contains("pw") && !unix.contains("user=u"), "{unix}");
    assert_eq!(redact_url("redis://:p w@[::1"), "redis://(unparsable)");
    let bad = error("[fleet]\nredis = \"redis://:hunter2@[::1\"\n");
    assert!(
        bad.starts_with("fleet.redis: invalid URL") && !bad.contains("hunter2"),
        "{bad}"
    );
    let margin = error(&format!("{FLEET}safety_margin = \"0s\"\n"));
    assert!(
        margin.contains("fleet.safety_margin: must be at least 10ms"),
        "{margin}"
    );
}
