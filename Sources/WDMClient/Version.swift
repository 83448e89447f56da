// The version of wdmfs, defined here once: `wdmfs --version` prints it, and a
// client can tell which wdmfs it was built against.

public enum WDMFSVersion {
    /// The release, semantic-versioned.
    public static let number = "0.1.0"
    /// What `wdmfs --version` prints: the release and the ioctl envelope's version.
    public static var description: String { "wdmfs \(number) (ioctl envelope version \(IoctlEnvelope.version))" }
}
