//! Config text that more than one test or fuzz harness writes: the TOML of a
//! `[[listeners.http.rules]]` table.

/// One `[[listeners.http.rules]]` table (keys in the order the README gives them).
/// `identities`, `methods` and `paths` are lists separated by spaces; an empty one is
/// left out (a rule without `methods` or `paths` matches any).
pub fn http_rule(name: &str, action: &str, identities: &str, methods: &str, paths: &str) -> String {
    let mut s = format!("[[listeners.http.rules]]\nname = {name:?}\n");
    for (key, list) in [
        ("identities", identities),
        ("methods", methods),
        ("paths", paths),
    ] {
        if !list.is_empty() {
            let items: Vec<String> = list.split_whitespace().map(|i| format!("{i:?}")).collect();
            s.push_str(&format!("{key} = [{}]\n", items.join(", ")));
        }
    }
    s.push_str(&format!("action = {action:?}\n"));
    s
}
