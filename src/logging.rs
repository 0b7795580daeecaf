//! Logging: `ISTHMUS_LOG` is an env-filter (default `info`), `ISTHMUS_LOG_FORMAT=json|plain`.
//! Colours only when stderr is a terminal; a filter that does not parse is said on stderr (and
//! `info` is used) rather than silently replaced.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Targets that are noisy at their defaults, quietened unless the filter names them: hickory
/// logs every query at INFO; h2 is chatty at debug.
const QUIET: &[(&str, &str)] = &[("hickory_server", "hickory_server=warn"), ("h2", "h2=warn")];

pub fn init() {
    let (filter, problem) = filter_from(std::env::var("ISTHMUS_LOG").ok().as_deref());
    if let Some(problem) = problem {
        eprintln!("{problem}");
    }
    let json = std::env::var("ISTHMUS_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// The filter for an `ISTHMUS_LOG` value (`None`: unset), and what to tell the operator when
/// the value does not parse. Pure, for tests.
fn filter_from(spec: Option<&str>) -> (EnvFilter, Option<String>) {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty());
    let (mut filter, problem) = match spec {
        None => (EnvFilter::new("info"), None),
        Some(text) => match EnvFilter::try_new(text) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new("info"),
                Some(format!(
                    "warning: ISTHMUS_LOG={text:?} is not a valid filter ({e}); logging at info. \
                     Examples: ISTHMUS_LOG=debug, ISTHMUS_LOG=info,isthmus_gateway=debug"
                )),
            ),
        },
    };
    for (target, directive) in QUIET {
        let named = spec.is_some_and(|s| {
            s.split(',')
                .any(|d| d.trim().split(['=', '[']).next() == Some(target))
        });
        if !named && let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    (filter, problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_directive_for_a_quiet_target_wins() {
        let (f, problem) = filter_from(Some("info,h2=debug"));
        assert!(problem.is_none());
        let text = f.to_string();
        assert!(text.contains("h2=debug"), "{text}");
        assert!(!text.contains("h2=warn"), "{text}");
        assert!(text.contains("hickory_server=warn"), "{text}");
    }

    #[test]
    fn defaults_quieten_noisy_targets() {
        let (f, problem) = filter_from(None);
        assert!(problem.is_none());
        let text = f.to_string();
        assert!(
            text.contains("h2=warn")
                && text.contains("hickory_server=warn")
                && text.contains("info"),
            "{text}"
        );
    }

    #[test]
    fn a_filter_that_does_not_parse_is_said_not_swallowed() {
        let (f, problem) = filter_from(Some("isthmus_gateway=loud"));
        let problem = problem.expect("a problem is reported");
        assert!(
            problem.contains("ISTHMUS_LOG=\"isthmus_gateway=loud\"") && problem.contains("info"),
            "{problem}"
        );
        assert!(f.to_string().contains("info"));
    }
}
