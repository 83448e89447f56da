// Driver package signatures: Ed25519 (swift-crypto) over the SHA-256 of the
// host executable a tree file names. `wdmfs sign --new-key KEY` makes a key pair
// (KEY, private, mode 0600; KEY.pub); `wdmfs sign FILE --key KEY` writes
// FILE.sig; `wdmfs verify --signature FILE --trusted-key KEY.pub` checks one.
// The daemon loads a driver package only if its signature is good and by a key
// given with --trusted-key, unless the mount says --test-signing (Windows'
// test-signing mode); the drivers built into wdmfs are trusted as part of it.
//
// FILE.sig is four lines of text:
//   wdmfs-signature 1
//   key <the signer's public key, base64 of its 32 bytes>
//   sha256 <the file's SHA-256, hex>
//   signature <base64 of the Ed25519 signature of "wdmfs-signature 1\nsha256 <hex>\n">

import ArgumentParser
import Crypto
import Foundation

enum PackageSignature {
    static func digest(of path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else { throw SigningError("\(path): cannot be read") }
        return SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    static func message(_ hex: String) -> Data { Data("wdmfs-signature 1\nsha256 \(hex)\n".utf8) }

    static func publicKey(file: String) throws -> Curve25519.Signing.PublicKey {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8),
              let raw = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)),
              let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
        else { throw SigningError("\(file): not a wdmfs public key (base64 of 32 bytes)") }
        return key
    }

    static func sign(_ path: String, keyFile: String) throws {
        guard let text = try? String(contentsOfFile: keyFile, encoding: .utf8),
              let raw = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)),
              let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
        else { throw SigningError("\(keyFile): not a wdmfs private key (make one with `wdmfs sign --new-key FILE`)") }
        let hex = try digest(of: path)
        let signature = try key.signature(for: message(hex))
        let out = "wdmfs-signature 1\nkey \(key.publicKey.rawRepresentation.base64EncodedString())\nsha256 \(hex)\nsignature \(signature.base64EncodedString())\n"
        try out.write(toFile: path + ".sig", atomically: true, encoding: .utf8)
    }

    static func newKey(_ file: String) throws {
        let key = Curve25519.Signing.PrivateKey()
        guard FileManager.default.createFile(atPath: file, contents: Data((key.rawRepresentation.base64EncodedString() + "\n").utf8),
                                             attributes: [.posixPermissions: 0o600])
        else { throw SigningError("\(file): cannot be written") }
        try (key.publicKey.rawRepresentation.base64EncodedString() + "\n").write(toFile: file + ".pub", atomically: true, encoding: .utf8)
    }

    /// Why `path` may not be loaded with these trusted keys; nil when its signature is good.
    static func problem(_ path: String, trusted: [Data]) -> String? {
        guard let text = try? String(contentsOfFile: path + ".sig", encoding: .utf8) else {
            return "driver package \(path) is not signed (no \(path).sig)"
        }
        var fields: [String: String] = [:]
        let lines = text.split(separator: "\n").map(String.init)
        guard lines.first == "wdmfs-signature 1" else { return "\(path).sig is not a wdmfs signature" }
        for line in lines.dropFirst() {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            if parts.count == 2 { fields[parts[0]] = parts[1] }
        }
        guard let keyText = fields["key"], let keyRaw = Data(base64Encoded: keyText),
              let key = try? Curve25519.Signing.PublicKey(rawRepresentation: keyRaw),
              let hex = fields["sha256"], let sigText = fields["signature"], let sig = Data(base64Encoded: sigText)
        else { return "\(path).sig is damaged" }
        guard key.isValidSignature(sig, for: message(hex)) else { return "\(path).sig: the signature does not match (tampered)" }
        guard let actual = try? digest(of: path), actual == hex else { return "driver package \(path) was changed after it was signed (tampered)" }
        guard trusted.contains(key.rawRepresentation) else {
            return "driver package \(path) is signed by a key that is not trusted (give its .pub with --trusted-key)"
        }
        return nil
    }
}

struct SigningError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

struct Sign: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sign a driver package's host executable (Ed25519), or make a key pair.",
        discussion: """
            Examples:
              wdmfs sign --new-key ~/wdmfs.key          (writes ~/wdmfs.key and ~/wdmfs.key.pub)
              wdmfs sign .build/debug/HelloHost --key ~/wdmfs.key
              wdmfs verify --signature .build/debug/HelloHost --trusted-key ~/wdmfs.key.pub
              wdmfs mount /mnt/wdm --tree tree.yaml --trusted-key ~/wdmfs.key.pub
            The signature is FILE.sig beside the file (docs/driver-packages.md says its format).
            """)
    @Argument(help: "The file to sign.") var file: String?
    @Option(help: "The private key to sign with.") var key: String?
    @Option(help: "Make a key pair: this file (private, mode 0600) and this file .pub.") var newKey: String?

    func run() throws {
        do {
            if let newKey {
                try PackageSignature.newKey(newKey)
                print("\(newKey), \(newKey).pub")
                return
            }
            guard let file, let key else { throw ValidationError("give FILE and --key KEY, or --new-key FILE") }
            try PackageSignature.sign(file, keyFile: key)
            print("\(file).sig")
        } catch let e as SigningError {
            FileHandle.standardError.write(Data("wdmfs: \(e)\n".utf8))
            throw ExitCode(1)
        }
    }
}
