//! JSON views of a group and, when shown, of its current members.

use geppetto_proto::v1 as pb;
use serde::Serialize;

/// A named set of puppets: a saved selector, or a list of names.
#[derive(Debug, Serialize)]
pub struct GroupView {
    pub name: String,
    /// `null` for a group of named puppets.
    pub selector: Option<String>,
    /// Empty for a group by selector.
    pub puppets: Vec<String>,
    pub description: String,
}

impl From<&pb::Group> for GroupView {
    fn from(g: &pb::Group) -> Self {
        let (selector, puppets) = match &g.members {
            Some(pb::group::Members::Selector(s)) => (Some(s.clone()), Vec::new()),
            Some(pb::group::Members::Puppets(p)) => (None, p.names.clone()),
            None => (None, Vec::new()),
        };
        GroupView {
            name: g.name.clone(),
            selector,
            puppets,
            description: g.description.clone(),
        }
    }
}

impl GroupView {
    /// Its members in one cell: the selector, or the names joined.
    pub fn members_line(&self) -> String {
        match &self.selector {
            Some(s) if s.is_empty() => "all".into(),
            Some(s) => s.clone(),
            None if self.puppets.is_empty() => "-".into(),
            None => self.puppets.join(","),
        }
    }
}

/// `groups show`: the group and the puppets it stands for now.
#[derive(Debug, Serialize)]
pub struct GroupShowView {
    #[serde(flatten)]
    pub group: GroupView,
    pub current_members: Vec<String>,
}

impl From<&pb::GroupView> for GroupShowView {
    fn from(v: &pb::GroupView) -> Self {
        GroupShowView {
            group: GroupView::from(v.group.as_ref().unwrap_or(&pb::Group::default())),
            current_members: v.current_members.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn group_json() {
        let by_selector = pb::Group {
            name: "webs".into(),
            members: Some(pb::group::Members::Selector("role in (web,proxy)".into())),
            description: "front ends".into(),
        };
        let view = GroupView::from(&by_selector);
        assert_eq!(view.members_line(), "role in (web,proxy)");
        assert_eq!(
            serde_json::to_value(view).unwrap(),
            json!({
                "name": "webs",
                "selector": "role in (web,proxy)",
                "puppets": [],
                "description": "front ends",
            })
        );

        let by_name = pb::Group {
            name: "dbs".into(),
            members: Some(pb::group::Members::Puppets(pb::PuppetNames {
                names: vec!["db-1".into(), "db-2".into()],
            })),
            description: String::new(),
        };
        let shown = pb::GroupView {
            group: Some(by_name),
            current_members: vec!["db-1".into()],
        };
        let view = GroupShowView::from(&shown);
        assert_eq!(view.group.members_line(), "db-1,db-2");
        assert_eq!(
            serde_json::to_value(view).unwrap(),
            json!({
                "name": "dbs",
                "selector": null,
                "puppets": ["db-1", "db-2"],
                "description": "",
                "current_members": ["db-1"],
            })
        );

        let empty = GroupView::from(&pb::Group::default());
        assert_eq!(empty.members_line(), "-");
        let all = GroupView::from(&pb::Group {
            members: Some(pb::group::Members::Selector(String::new())),
            ..Default::default()
        });
        assert_eq!(all.members_line(), "all");
    }
}
