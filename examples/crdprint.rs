fn main() { for c in berth::api::all_crds() { println!("---\n{}", serde_saphyr::to_string(&c).unwrap()); } }
