//! The deployment files: the Kubernetes manifests are valid against the
//! API's schemas, the kustomization lists them all, and the pipeline in the
//! ConfigMap is one `flumen validate` accepts.

use std::path::Path;

use super::flumen;
use flumen::config::Document;

fn manifests() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn yaml(path: &Path) -> serde_json::Value {
    Document::parse(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .value
}

#[test]
fn the_kubernetes_manifests_are_valid_and_run_a_valid_pipeline() {
    let validator = std::env::var("FLUMEN_TEST_KUBERNETES_VALIDATE").expect(
        "this test needs kubernetes-validate: run it through scripts/test.sh, which installs it",
    );
    let kustomization = yaml(&manifests().join("kustomization.yaml"));
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(manifests())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present, "the kustomization lists every manifest");

    let output = std::process::Command::new(&validator)
        .arg("--strict")
        .args(listed.iter().map(|name| manifests().join(name)))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // The pipeline the replicas run, with the variables the StatefulSet
    // sets.
    let config_map = yaml(&manifests().join("pipeline.yaml"));
    let pipeline = config_map["data"]["leaderboard.yaml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leaderboard.yaml");
    std::fs::write(&file, pipeline).unwrap();
    let statefulset = yaml(&manifests().join("statefulset.yaml"));
    let container = &statefulset["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args.last(), Some(&"/etc/flumen/leaderboard.yaml"));
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for variable in ["KAFKA_BROKERS", "LAKE", "CHECKPOINTS"] {
        assert!(env.contains(&variable), "the StatefulSet sets {variable}");
    }
    let output = flumen()
        .arg("validate")
        .arg(&file)
        .env("KAFKA_BROKERS", "127.0.0.1:9092")
        .env("LAKE", dir.path().join("lake"))
        .env("CHECKPOINTS", dir.path().join("checkpoints"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
