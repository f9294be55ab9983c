//! Authorization: which role each admin call needs.
//!
//! [`PERMISSIONS`] is the one source of truth. The README's role table is
//! checked against it by a test, and the role-matrix test calls every admin
//! RPC with every role and expects exactly these answers.

use crate::domain::Role;

/// Every admin RPC (`Service/Method`) and the least role that may call it.
/// Tokens: every user manages their own; only admins touch other users'
/// (checked inside the calls).
pub const PERMISSIONS: &[(&str, Role)] = &[
    ("Puppets/ListPuppets", Role::Viewer),
    ("Puppets/GetPuppet", Role::Viewer),
    ("Puppets/GetPuppetQueue", Role::Viewer),
    ("Puppets/LabelPuppet", Role::Operator),
    ("Puppets/DisablePuppet", Role::Operator),
    ("Puppets/EnablePuppet", Role::Operator),
    ("Puppets/ApprovePuppet", Role::Operator),
    ("Puppets/RejectPuppet", Role::Operator),
    ("Puppets/RemovePuppet", Role::Admin),
    ("Puppets/RotatePuppetCredential", Role::Admin),
    ("Puppets/RevokePuppetCredential", Role::Admin),
    ("EnrollTokens/CreateEnrollToken", Role::Admin),
    ("EnrollTokens/ListEnrollTokens", Role::Admin),
    ("EnrollTokens/RevokeEnrollToken", Role::Admin),
    ("Tasks/CreateTask", Role::Operator),
    ("Tasks/UpdateTask", Role::Operator),
    ("Tasks/GetTask", Role::Viewer),
    ("Tasks/ListTasks", Role::Viewer),
    ("Tasks/RemoveTask", Role::Operator),
    ("Jobs/CreateJob", Role::Operator),
    ("Jobs/GetJob", Role::Viewer),
    ("Jobs/ListJobs", Role::Viewer),
    ("Jobs/CancelJob", Role::Operator),
    ("Jobs/WatchJob", Role::Viewer),
    ("Jobs/ApproveJob", Role::Operator),
    ("Jobs/RejectJob", Role::Operator),
    ("Jobs/RetryJob", Role::Operator),
    ("Jobs/SkipRuns", Role::Operator),
    ("Jobs/AcknowledgeJob", Role::Operator),
    ("Runs/GetRun", Role::Viewer),
    ("Runs/ListRuns", Role::Viewer),
    ("Runs/CancelRun", Role::Operator),
    ("Runs/ReadLog", Role::Viewer),
    ("Runs/FollowLog", Role::Viewer),
    ("Users/AddUser", Role::Admin),
    ("Users/ListUsers", Role::Admin),
    ("Users/SetUserRole", Role::Admin),
    ("Users/RemoveUser", Role::Admin),
    ("Users/WhoAmI", Role::Viewer),
    ("Tokens/CreateToken", Role::Viewer),
    ("Tokens/ListTokens", Role::Viewer),
    ("Tokens/RevokeToken", Role::Viewer),
    ("Audit/ListAudit", Role::Admin),
    ("Resources/CreateResource", Role::Operator),
    ("Resources/ListResources", Role::Viewer),
    ("Resources/GetResource", Role::Viewer),
    ("Resources/UpdateResource", Role::Operator),
    ("Resources/RemoveResource", Role::Operator),
    ("Artifacts/BeginUpload", Role::Operator),
    ("Artifacts/UploadChunk", Role::Operator),
    ("Artifacts/CommitUpload", Role::Operator),
    ("Artifacts/ListArtifacts", Role::Viewer),
    ("Artifacts/ListPuppetReleases", Role::Viewer),
    ("Artifacts/GetArtifact", Role::Viewer),
    ("Artifacts/RemoveArtifact", Role::Operator),
    ("Server/GetServerInfo", Role::Viewer),
    ("Groups/CreateGroup", Role::Operator),
    ("Groups/ListGroups", Role::Viewer),
    ("Groups/GetGroup", Role::Viewer),
    ("Groups/RemoveGroup", Role::Operator),
    ("Events/WatchEvents", Role::Viewer),
    ("Events/ListEvents", Role::Viewer),
    ("Notifications/AddRule", Role::Operator),
    ("Notifications/ListRules", Role::Viewer),
    ("Notifications/RemoveRule", Role::Operator),
    ("Notifications/TestRule", Role::Operator),
];

/// The role an admin RPC needs. An RPC missing from the table needs admin,
/// so that forgetting one fails closed.
pub fn required_role(action: &str) -> Role {
    PERMISSIONS
        .iter()
        .find(|(a, _)| *a == action)
        .map(|(_, role)| *role)
        .unwrap_or(Role::Admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_calls_need_admin() {
        assert_eq!(required_role("Tasks/GetTask"), Role::Viewer);
        assert_eq!(required_role("Nope/Nothing"), Role::Admin);
    }

    /// The README documents the same table.
    #[test]
    fn the_readme_table_matches_the_code() {
        let readme = include_str!("../../../README.md");
        let mut documented = Vec::new();
        for line in readme.lines() {
            let Some(rest) = line.strip_prefix("| `") else {
                continue;
            };
            let Some((action, cells)) = rest.split_once('`') else {
                continue;
            };
            let is_rpc = action.split_once('/').is_some_and(|(service, method)| {
                [service, method].iter().all(|part| {
                    part.starts_with(|c: char| c.is_ascii_uppercase())
                        && part.chars().all(|c| c.is_ascii_alphanumeric())
                })
            });
            if !is_rpc {
                continue;
            }
            let cells: Vec<&str> = cells
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            let allowed: Vec<bool> = cells.iter().map(|c| *c == "yes").collect();
            documented.push((action.to_string(), allowed));
        }
        let expected: Vec<(String, Vec<bool>)> = PERMISSIONS
            .iter()
            .map(|(action, role)| {
                let allowed = [Role::Viewer, Role::Operator, Role::Admin]
                    .iter()
                    .map(|r| r >= role)
                    .collect();
                (action.to_string(), allowed)
            })
            .collect();
        assert_eq!(
            documented, expected,
            "README role table differs from PERMISSIONS"
        );
    }
}
