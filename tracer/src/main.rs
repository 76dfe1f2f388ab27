fn main() -> anyhow::Result<()> {
    let _ = cfstrace::EBPF_OBJECT.len();
    Ok(())
}
