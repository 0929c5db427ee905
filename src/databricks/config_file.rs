//! `~/.databrickscfg`: profiles, chosen as the SDKs choose them.

use std::collections::HashMap;
use std::path::Path;

use ini::Ini;

use crate::Error;

/// The settings of one profile of the config file.
#[derive(Debug, Default)]
pub(crate) struct Profile {
    pub(crate) name: String,
    values: HashMap<String, String>,
}

impl Profile {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// Loads the profile to use from `path`.
///
/// `requested` (from an explicit setting or `DATABRICKS_CONFIG_PROFILE`) must exist. Without
/// it, `[__settings__] default_profile` is used when set, else `[DEFAULT]` when present, else
/// none. A missing file is no error unless a profile was requested.
pub(crate) fn load(path: &Path, requested: Option<&str>) -> Result<Option<Profile>, Error> {
    let shown = path.display();
    let read = crate::files::read_bounded(path, crate::files::MAX_CONFIG_FILE).and_then(|bytes| {
        String::from_utf8(bytes)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8"))
    });
    let text = match read {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match requested {
                Some(name) => Err(Error::workspace_config(format!(
                    "profile `{name}` was requested, but the config file {shown} does not exist"
                ))),
                None => Ok(None),
            };
        }
        Err(e) => {
            return Err(Error::workspace_config_because(
                format!("could not read the config file {shown}"),
                e,
            ));
        }
    };
    parse(&text, &shown.to_string(), requested)
}

/// The profile to use from the text of a config file; `shown` names the file in errors.
pub(crate) fn parse(
    text: &str,
    shown: &str,
    requested: Option<&str>,
) -> Result<Option<Profile>, Error> {
    let ini = Ini::load_from_str(text).map_err(|e| {
        Error::workspace_config(format!(
            "the config file {shown} is not valid INI (line {}, column {}: {})",
            e.line, e.col, e.msg
        ))
    })?;
    let default_profile = ini
        .section(Some("__settings__"))
        .and_then(|s| s.get("default_profile"))
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let (name, must_exist) = match (requested, default_profile) {
        (Some(name), _) => (name, true),
        (None, Some(name)) => (name, true),
        (None, None) => ("DEFAULT", false),
    };
    match ini.section(Some(name)) {
        Some(section) => Ok(Some(Profile {
            name: name.to_owned(),
            values: section
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                .collect(),
        })),
        None if must_exist => {
            let mut known: Vec<&str> = ini
                .sections()
                .flatten()
                .filter(|s| *s != "__settings__")
                .collect();
            known.sort_unstable();
            Err(Error::workspace_config(format!(
                "profile `{name}` is not in the config file {shown} (it has: {})",
                if known.is_empty() {
                    String::from("no profiles")
                } else {
                    known.join(", ")
                }
            )))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    const CONFIG: &str = "[DEFAULT]\nhost = https://default.example.com\ntoken = dapi-default\n\n\
                          [staging]\nhost = https://staging.example.com\nclient_id = sp\nclient_secret = s\n";

    #[test]
    fn default_section_is_used_without_a_request() {
        let cfg = file(CONFIG);
        let profile = load(cfg.path(), None).unwrap().unwrap();
        assert_eq!(profile.name, "DEFAULT");
        assert_eq!(profile.get("host"), Some("https://default.example.com"));
    }

    #[test]
    fn requested_and_default_profile_settings_are_honoured() {
        let cfg = file(CONFIG);
        assert_eq!(
            load(cfg.path(), Some("staging"))
                .unwrap()
                .unwrap()
                .get("client_id"),
            Some("sp")
        );
        let with_default = file(&format!(
            "[__settings__]\ndefault_profile = staging\n{CONFIG}"
        ));
        assert_eq!(
            load(with_default.path(), None).unwrap().unwrap().name,
            "staging"
        );
    }

    #[test]
    fn unknown_profiles_missing_files_and_bad_ini_are_explained() {
        let cfg = file(CONFIG);
        let err = load(cfg.path(), Some("prod")).unwrap_err().to_string();
        assert!(
            err.contains("profile `prod` is not in the config file")
                && err.contains("DEFAULT, staging"),
            "{err}"
        );
        let missing = Path::new("/nonexistent/databrickscfg");
        assert!(load(missing, None).unwrap().is_none());
        assert!(
            load(missing, Some("x"))
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let bad = file("[unterminated\nhost = x\n");
        assert!(
            load(bad.path(), None)
                .unwrap_err()
                .to_string()
                .contains("not valid INI")
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text, and any requested profile, gives a profile, none, or a
        /// `WorkspaceError::Config`; none panics.
        #[test]
        fn any_config_text_is_read_or_refused_typed(
            text in any::<String>(),
            requested in proptest::option::of("[A-Za-z_]{0,10}"),
        ) {
            if let Err(error) = parse(&text, "test.cfg", requested.as_deref()) {
                prop_assert!(matches!(error, Error::Workspace(crate::error::WorkspaceError::Config { .. })), "{error:?}");
            }
        }

        /// INI-shaped text with odd sections, keys, quotes and escapes never panics.
        #[test]
        fn ini_shaped_text_is_read(
            lines in proptest::collection::vec("(\\[[A-Za-z_ ]{0,8}\\]?|[a-z_]{0,8} ?= ?[ -~]{0,20}|[;#][ -~]{0,10}|\\\\|\"|)", 0..12),
        ) {
            let text = lines.join("\n");
            let _ = parse(&text, "test.cfg", None);
            let _ = parse(&text, "test.cfg", Some("DEFAULT"));
        }
    }
}
