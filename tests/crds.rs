//! The checked-in CRDs must be what `berth crds` generates (CI fails on drift).

use std::path::Path;

#[test]
fn checked_in_crds_match_generated() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated = berth::crds::yaml_by_file();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    expected.push("kustomization.yaml".into());
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "crds/ holds other files than `berth crds` writes; run: cargo run -- crds --dir crds"
    );
    for (name, yaml) in generated {
        let current = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(
            current == yaml,
            "crds/{name} is stale; run: cargo run -- crds --dir crds --chart-dir charts/berth/templates/crds"
        );
    }
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    assert!(
        kustomization == berth::crds::kustomization(),
        "crds/kustomization.yaml is stale; run: cargo run -- crds --dir crds --chart-dir charts/berth/templates/crds"
    );
}

#[test]
fn checked_in_chart_crd_templates_match_generated() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/berth/templates/crds");
    let hint = "run: cargo run -- crds --dir crds --chart-dir charts/berth/templates/crds";
    let generated = berth::crds::chart_templates_by_file();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("charts/berth/templates/crds/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "charts/berth/templates/crds/ holds other files than `berth crds` writes; {hint}");
    for (name, yaml) in generated {
        let current = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(current == yaml, "charts/berth/templates/crds/{name} is stale; {hint}");
    }
    // Helm installs crds/ once and never upgrades it; the CRDs must not be there as well.
    let chart_crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/berth/crds");
    assert!(!chart_crds.exists(), "charts/berth/crds/ would be installed once and never upgraded; remove it");
}

#[test]
fn every_field_has_a_description() {
    fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                let p = format!("{path}.{k}");
                if v.get("description").is_none() && !["apiVersion", "kind", "metadata"].contains(&k.as_str()) {
                    missing.push(p.clone());
                }
                walk(v, &p, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    let mut missing = Vec::new();
    for crd in berth::api::all_crds() {
        let schema = berth::api::validation::crd_schema(&crd);
        walk(&schema, &crd.spec.names.kind, &mut missing);
    }
    assert!(missing.is_empty(), "fields without a description (kubectl explain shows nothing): {missing:#?}");
}

#[test]
fn every_crd_has_short_name_category_status_and_printer_columns() {
    for crd in berth::api::all_crds() {
        let names = &crd.spec.names;
        assert_eq!(names.categories.as_deref(), Some(&["berth".to_string()][..]), "{}", names.kind);
        assert_eq!(names.short_names.as_ref().map(Vec::len), Some(1), "{}", names.kind);
        let version = &crd.spec.versions[0];
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{} has a status subresource",
            names.kind
        );
        let columns = version.additional_printer_columns.as_ref().expect("printer columns");
        assert!(columns.iter().any(|c| c.name == "Age"), "{}", names.kind);
    }
}
