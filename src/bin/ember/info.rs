//! `ember info`: what a model folder holds, and what the GPUs it would run on are.

use ember::{Device, Pooling, Result};

use crate::*;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Model folder or Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// Also open these GPUs (cuda, cuda:N or cuda:0,1) and describe each: name, driver, which
    /// GEMM runs there and why, and how long opening took. An unusable one is an error.
    #[arg(long)]
    device: Option<String>,
}

pub fn info(args: InfoArgs) -> Result<()> {
    let dir = model_dir(&args.model)?;
    let encoder = ember::Encoder::load(&dir, Device::Cpu)?;
    let c = encoder.config();
    let arch = match (c.family, c.head) {
        (ember::config::Family::Bert, ember::config::Head::None) => "BertModel".to_string(),
        (ember::config::Family::XlmRoberta, ember::config::Head::None) => "XLMRobertaModel".to_string(),
        (family, ember::config::Head::Classifier { num_labels }) => {
            format!("{family:?}ForSequenceClassification ({num_labels} labels)")
        }
    };
    let pooling = match c.defaults.pooling {
        Pooling::Cls => "cls",
        Pooling::Mean => "mean",
    };
    let params = c.parameter_count();
    println!("model          {}", dir.display());
    println!("architecture   {arch}");
    println!("layers         {}", c.num_layers);
    println!("hidden size    {}", c.hidden_size);
    println!("heads          {} (head dim {})", c.num_heads, c.head_dim());
    println!("intermediate   {}", c.intermediate_size);
    println!("vocabulary     {}", c.vocab_size);
    println!("parameters     {params} ({:.1} M)", params as f64 / 1e6);
    println!(
        "stored dtype   {}",
        encoder.stored_dtype().map_or("mixed", |d| d.name())
    );
    println!(
        "pooling        {pooling}{} (from {})",
        if c.defaults.normalize {
            ", L2-normalized"
        } else {
            ""
        },
        c.defaults.source
    );
    println!(
        "max length     {} (positions for {})",
        c.defaults.max_length,
        c.max_supported_length()
    );
    println!("devices        {}", ember::encoder::compiled_devices().join(", "));
    for device in parse_devices(args.device.as_deref().unwrap_or("cpu"))? {
        let Device::Cuda(ordinal) = device else {
            continue; // the CPU: nothing to open
        };
        for (key, value) in ember::encoder::describe_gpu(ordinal)? {
            let key = if key == "gpu" {
                device.to_string()
            } else {
                format!("  {key}")
            };
            println!("{key:<15}{value}");
        }
    }
    Ok(())
}
