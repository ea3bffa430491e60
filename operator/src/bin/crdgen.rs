//! Prints the ChatGateway CRD: `cargo run -p chat-gateway-operator --bin crdgen > crds/chatgateway.yaml`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", chat_gateway_operator::crd_yaml()?);
    Ok(())
}
