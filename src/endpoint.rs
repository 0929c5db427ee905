//! `EndpointName`: the validated resource name of a Lakebase endpoint.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The resource name of a Lakebase endpoint:
/// `projects/{project}/branches/{branch}/endpoints/{endpoint}`.
///
/// Each id is 1 to 63 characters: a lowercase letter, then lowercase letters, digits or
/// hyphens. Surrounding whitespace is ignored (names pasted from a console often carry a
/// newline); anything else that does not fit is an [`Error::InvalidEndpointName`] saying which
/// part is wrong.
///
/// ```
/// use lakebase_pool::EndpointName;
///
/// let name: EndpointName = "projects/shop/branches/production/endpoints/ep-primary".parse()?;
/// assert_eq!(name.project(), "shop");
/// assert_eq!(name.branch_path(), "projects/shop/branches/production");
/// assert_eq!(name.endpoint_id(), "ep-primary");
///
/// let err = "projects/Shop/branches/production/endpoints/ep".parse::<EndpointName>().unwrap_err();
/// assert!(err.to_string().contains("project id `Shop`"));
/// # Ok::<(), lakebase_pool::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointName {
    project: String,
    branch: String,
    endpoint: String,
}

const SHAPE: &str = "projects/<project>/branches/<branch>/endpoints/<endpoint>";

impl EndpointName {
    /// Parses and validates a name; the same as `str::parse`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpointName`] naming the part that is wrong.
    ///
    /// ```
    /// let name = lakebase_pool::EndpointName::parse("projects/p/branches/b/endpoints/e")?;
    /// assert_eq!(name.to_string(), "projects/p/branches/b/endpoints/e");
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn parse(name: &str) -> Result<Self, Error> {
        let trimmed = name.trim();
        let invalid = |problem: String| Error::InvalidEndpointName {
            input: trimmed.chars().take(200).collect(),
            problem,
        };
        let parts: Vec<&str> = trimmed.split('/').collect();
        let [projects, project, branches, branch, endpoints, endpoint] = parts[..] else {
            return Err(invalid(format!(
                "it has {} segments separated by `/`, expected 6 ({SHAPE})",
                parts.len()
            )));
        };
        for (found, expected) in [
            (projects, "projects"),
            (branches, "branches"),
            (endpoints, "endpoints"),
        ] {
            if found != expected {
                return Err(invalid(format!(
                    "expected `{expected}` where it says `{found}` ({SHAPE})"
                )));
            }
        }
        for (kind, id) in [
            ("project", project),
            ("branch", branch),
            ("endpoint", endpoint),
        ] {
            check_id(kind, id).map_err(invalid)?;
        }
        Ok(EndpointName {
            project: project.to_owned(),
            branch: branch.to_owned(),
            endpoint: endpoint.to_owned(),
        })
    }

    /// The project id.
    ///
    /// ```
    /// # let name = lakebase_pool::EndpointName::parse("projects/p/branches/b/endpoints/e").unwrap();
    /// assert_eq!(name.project(), "p");
    /// ```
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The branch id.
    ///
    /// ```
    /// # let name = lakebase_pool::EndpointName::parse("projects/p/branches/b/endpoints/e").unwrap();
    /// assert_eq!(name.branch(), "b");
    /// ```
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The endpoint id (also the first label of its host name, which Lakebase routes by).
    ///
    /// ```
    /// # let name = lakebase_pool::EndpointName::parse("projects/p/branches/b/endpoints/e").unwrap();
    /// assert_eq!(name.endpoint_id(), "e");
    /// ```
    pub fn endpoint_id(&self) -> &str {
        &self.endpoint
    }

    /// The resource name of the branch: `projects/{project}/branches/{branch}`.
    ///
    /// ```
    /// # let name = lakebase_pool::EndpointName::parse("projects/p/branches/b/endpoints/e").unwrap();
    /// assert_eq!(name.branch_path(), "projects/p/branches/b");
    /// ```
    pub fn branch_path(&self) -> String {
        format!("projects/{}/branches/{}", self.project, self.branch)
    }
}

/// Checks one resource id; the error says what an id must look like.
pub(crate) fn check_id(kind: &str, id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if id.is_empty() || id.len() > 63 || !starts_with_letter || !rest_ok {
        let shown: String = id.chars().take(70).collect();
        return Err(format!(
            "{kind} id `{shown}` is invalid: ids are 1 to 63 characters, a lowercase letter \
             followed by lowercase letters, digits or hyphens"
        ));
    }
    Ok(())
}

impl FromStr for EndpointName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        EndpointName::parse(name)
    }
}

impl fmt::Display for EndpointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projects/{}/branches/{}/endpoints/{}",
            self.project, self.branch, self.endpoint
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(name: &str) -> String {
        match EndpointName::parse(name) {
            Err(Error::InvalidEndpointName { problem, .. }) => problem,
            other => panic!("{name}: unexpected {other:?}"),
        }
    }

    #[test]
    fn valid_names_parse_and_print_back() {
        let text = "projects/my-shop/branches/dev-2/endpoints/ep-primary";
        let name = EndpointName::parse(text).unwrap();
        assert_eq!(name.to_string(), text);
        assert_eq!(EndpointName::parse(&format!("  {text}\n")).unwrap(), name);
        let longest = format!("projects/{}/branches/b/endpoints/e", "a".repeat(63));
        assert!(EndpointName::parse(&longest).is_ok());
    }

    #[test]
    fn each_malformation_is_named() {
        assert!(problem("").contains("1 segments"));
        assert!(problem("projects/p/branches/b").contains("4 segments"));
        assert!(problem("projects/p/branches/b/endpoints/e/").contains("7 segments"));
        assert!(
            problem("project/p/branches/b/endpoints/e")
                .contains("expected `projects` where it says `project`")
        );
        assert!(problem("projects/p/branch/b/endpoints/e").contains("`branches`"));
        assert!(problem("projects/P/branches/b/endpoints/e").contains("project id `P`"));
        assert!(problem("projects/p/branches/1b/endpoints/e").contains("branch id `1b`"));
        assert!(problem("projects/p/branches/b/endpoints/e_1").contains("endpoint id `e_1`"));
        assert!(problem("projects/p/branches//endpoints/e").contains("branch id ``"));
        let too_long = format!("projects/{}/branches/b/endpoints/e", "a".repeat(64));
        assert!(problem(&too_long).contains("1 to 63"));
        assert!(problem("projects/p/branches/b/endpoints/é").contains("endpoint id"));
    }

    #[test]
    fn display_of_the_error_shows_the_expected_shape() {
        let err = EndpointName::parse("ep-primary").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid Lakebase endpoint name `ep-primary`: it has 1 segments separated by `/`, \
             expected 6 (projects/<project>/branches/<branch>/endpoints/<endpoint>)"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text either parses into a name that prints back as the trimmed input, or fails
        /// with `InvalidEndpointName` quoting at most 200 characters of it.
        #[test]
        fn any_text_parses_or_fails_typed(text in any::<String>()) {
            match EndpointName::parse(&text) {
                Ok(name) => prop_assert_eq!(name.to_string(), text.trim()),
                Err(Error::InvalidEndpointName { input, problem }) => {
                    prop_assert!(input.chars().count() <= 200);
                    prop_assert!(!problem.is_empty());
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }

        /// Text shaped like a name, with ids from a wider alphabet, parses exactly when each id
        /// follows the rules.
        #[test]
        fn ids_are_accepted_exactly_when_valid(
            ids in proptest::array::uniform3("[a-zA-Z0-9_.-]{0,70}"),
        ) {
            let text = format!("projects/{}/branches/{}/endpoints/{}", ids[0], ids[1], ids[2]);
            let valid = ids.iter().all(|id| check_id("x", id).is_ok());
            prop_assert_eq!(EndpointName::parse(&text).is_ok(), valid, "{}", text);
        }
    }
}
