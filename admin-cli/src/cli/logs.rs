//! `geppetto logs`: which run's output to write.

use clap::Args;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A run id (run-...), or a job id (job-...) with --puppet
    pub id: String,
    /// With a job id: the puppet whose run to show
    #[arg(long, value_name = "NAME")]
    pub puppet: Option<String>,
    /// Keep printing output as it comes, until the run is finished
    #[arg(long, short = 'f')]
    pub follow: bool,
}
