//! `spec.ingress.dns`: the external-dns annotations of the Ingress (hostname, TTL, target,
//! alias), with the tier's TTL default and the check that every published name is routed.

use std::collections::BTreeMap;

use crate::api::appenvironment::{IngressSettings, Tier};
use crate::api::validation::FieldError;

/// Annotation prefix external-dns reads.
pub const PREFIX: &str = "external-dns.alpha.kubernetes.io/";

/// `spec.ingress.dns` with its defaults resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedDns {
    pub hostnames: Vec<String>,
    pub ttl: i64,
    pub target: Option<String>,
    pub alias: bool,
}

/// TTL when `spec.ingress.dns.ttl` is absent: short where addresses change often, longer in
/// production where resolvers should cache.
pub fn default_ttl(tier: Tier) -> i64 {
    match tier {
        Tier::Development | Tier::Staging => 60,
        Tier::Production => 300,
    }
}

/// Resolves `ingress.dns` (`None` when absent), pushing a [`FieldError`] for every published
/// name that is not an Ingress host and for external-dns annotations set by hand.
pub fn resolve(ingress: &IngressSettings, tier: Tier, errors: &mut Vec<FieldError>) -> Option<ResolvedDns> {
    let dns = ingress.dns.as_ref()?;
    if ingress.hosts.is_empty() {
        errors.push(FieldError::new(
            "spec.ingress.dns",
            "needs at least one host in spec.ingress.hosts: external-dns publishes records for those names",
        ));
    }
    for (i, name) in dns.hostnames.iter().enumerate() {
        if !ingress.hosts.contains(name) {
            errors.push(FieldError::new(
                format!("spec.ingress.dns.hostnames[{i}]"),
                format!(
                    "{name:?} is not one of spec.ingress.hosts ({}); add it there or remove it here, or the record would point at an Ingress that does not route it",
                    ingress.hosts.join(", ")
                ),
            ));
        }
    }
    for key in ingress.annotations.keys().filter(|k| k.starts_with(PREFIX)) {
        errors.push(FieldError::new(
            format!("spec.ingress.annotations[{key}]"),
            "is set by spec.ingress.dns: remove it from spec.ingress.annotations and use spec.ingress.dns",
        ));
    }
    let alias = dns.alias.unwrap_or(false);
    if alias && dns.target.as_deref().is_some_and(is_ip) {
        errors.push(FieldError::new(
            "spec.ingress.dns.alias",
            "needs a hostname target (a load balancer's DNS name), not an IP address: remove alias or set target to the load balancer's hostname",
        ));
    }
    Some(ResolvedDns {
        hostnames: if dns.hostnames.is_empty() { ingress.hosts.clone() } else { dns.hostnames.clone() },
        ttl: dns.ttl.unwrap_or_else(|| default_ttl(tier)),
        target: dns.target.clone(),
        alias,
    })
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// The external-dns annotations of `dns`.
pub fn annotations(dns: &ResolvedDns) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        (format!("{PREFIX}hostname"), dns.hostnames.join(",")),
        (format!("{PREFIX}ttl"), dns.ttl.to_string()),
    ]);
    if let Some(target) = &dns.target {
        out.insert(format!("{PREFIX}target"), target.clone());
    }
    if dns.alias {
        out.insert(format!("{PREFIX}alias"), "true".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::appenvironment::IngressDns;

    fn ingress(hosts: &[&str], dns: IngressDns) -> IngressSettings {
        IngressSettings {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            dns: Some(dns),
            ..IngressSettings::default()
        }
    }

    #[test]
    fn defaults_to_every_host_and_the_tier_ttl() {
        let mut errors = Vec::new();
        let dns = resolve(
            &ingress(&["shop.example.com", "www.example.com"], IngressDns::default()),
            Tier::Production,
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let a = annotations(&dns);
        assert_eq!(a["external-dns.alpha.kubernetes.io/hostname"], "shop.example.com,www.example.com");
        assert_eq!(a["external-dns.alpha.kubernetes.io/ttl"], "300");
        assert!(!a.contains_key("external-dns.alpha.kubernetes.io/alias"));
        let dev = resolve(&ingress(&["a.example.com"], IngressDns::default()), Tier::Development, &mut errors).unwrap();
        assert_eq!(dev.ttl, 60);
    }

    #[test]
    fn explicit_ttl_target_and_alias() {
        let mut errors = Vec::new();
        let spec = IngressDns {
            hostnames: vec!["shop.example.com".into()],
            ttl: Some(30),
            target: Some("k8s-shared-123.eu-west-1.elb.amazonaws.com".into()),
            alias: Some(true),
        };
        let a = annotations(
            &resolve(&ingress(&["shop.example.com", "x.example.com"], spec), Tier::Production, &mut errors).unwrap(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(a["external-dns.alpha.kubernetes.io/hostname"], "shop.example.com");
        assert_eq!(a["external-dns.alpha.kubernetes.io/ttl"], "30");
        assert_eq!(a["external-dns.alpha.kubernetes.io/target"], "k8s-shared-123.eu-west-1.elb.amazonaws.com");
        assert_eq!(a["external-dns.alpha.kubernetes.io/alias"], "true");
    }

    #[test]
    fn refuses_names_the_ingress_does_not_route_an_ip_alias_and_hand_written_annotations() {
        let mut errors = Vec::new();
        let mut ing = ingress(
            &["shop.example.com"],
            IngressDns {
                hostnames: vec!["shop.example.com".into(), "admin.example.com".into()],
                target: Some("203.0.113.7".into()),
                alias: Some(true),
                ..IngressDns::default()
            },
        );
        ing.annotations.insert("external-dns.alpha.kubernetes.io/ttl".into(), "5".into());
        resolve(&ing, Tier::Staging, &mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.ingress.dns.hostnames[1]",
                "spec.ingress.annotations[external-dns.alpha.kubernetes.io/ttl]",
                "spec.ingress.dns.alias"
            ]
        );
        assert!(
            errors[0].message.contains("\"admin.example.com\" is not one of spec.ingress.hosts (shop.example.com)")
        );
    }
}
