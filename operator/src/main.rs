//! `chat-gateway-operator`: runs the controller, or renders a ChatGateway's children.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Kubernetes operator for ChatGateway resources.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the objects the operator would apply for the ChatGateway(s) in a file.
    Render {
        /// YAML file with one or more ChatGateway documents; `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for resources that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Print the ChatGateway CRD.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Render { file, namespace }) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?
            };
            print!(
                "{}",
                chat_gateway_operator::render::render(&text, &namespace)?
            );
            Ok(())
        }
        Some(Command::Crd) => {
            print!("{}", chat_gateway_operator::crd_yaml()?);
            Ok(())
        }
        None => anyhow::bail!("the controller is not wired yet"),
    }
}
