//! Checks for a pasted SSH private key. Messages never quote key material.

use base64::Engine as _;

const OPENSSH_MAGIC: &[u8] = b"openssh-key-v1\0";

/// The error for a key that needs a passphrase.
pub const ENCRYPTED_KEY: &str = "sshPrivateKey is protected by a passphrase, but SSH runs non-interactively (BatchMode) and cannot prompt for it. Remove the passphrase (ssh-keygen -p -N \"\" -f <key>) or use sshIdentityFile with a key loaded in the host's ssh-agent.";

/// Check pasted key material; `Err` carries an operator-facing message.
pub fn check_private_key(raw: &str) -> Result<(), String> {
    let text = raw.trim();
    if text.starts_with("PuTTY-User-Key-File-") {
        return Err("sshPrivateKey looks like a PuTTY .ppk key; export it in OpenSSH format (puttygen key.ppk -O private-openssh-new -o id_ed25519) and paste that.".to_string());
    }
    let public_prefixes = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"];
    if public_prefixes.iter().any(|p| text.starts_with(p))
        || text.contains("-----BEGIN SSH2 PUBLIC KEY-----")
        || text.contains("-----BEGIN PUBLIC KEY-----")
        || text.contains("-----BEGIN RSA PUBLIC KEY-----")
    {
        return Err("sshPrivateKey contains a public key; paste the private key (the file without .pub) instead.".to_string());
    }
    if !text.contains('\n') && text.contains("\\n") {
        return Err("sshPrivateKey contains literal \\n sequences instead of line breaks; paste the key file's contents as they are.".to_string());
    }
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let Some(begin_idx) = lines.iter().position(|l| armor_label(l, "BEGIN").is_some()) else {
        return Err("sshPrivateKey must be a PEM private key that starts with a -----BEGIN … PRIVATE KEY----- line.".to_string());
    };
    let begin_label = armor_label(lines[begin_idx], "BEGIN").unwrap_or_default();
    if !begin_label.ends_with("PRIVATE KEY") {
        return Err(format!(
            "sshPrivateKey must be a private key, but its BEGIN line is -----BEGIN {begin_label}-----."
        ));
    }
    let Some(end_rel) = lines[begin_idx + 1..]
        .iter()
        .position(|l| armor_label(l, "END").is_some())
    else {
        return Err(format!(
            "sshPrivateKey is missing its -----END {begin_label}----- line; paste the whole key."
        ));
    };
    let end_idx = begin_idx + 1 + end_rel;
    let end_label = armor_label(lines[end_idx], "END").unwrap_or_default();
    if end_label != begin_label {
        return Err(format!(
            "sshPrivateKey's END line (-----END {end_label}-----) does not match its BEGIN line (-----BEGIN {begin_label}-----)."
        ));
    }
    if begin_label == "ENCRYPTED PRIVATE KEY" {
        return Err(ENCRYPTED_KEY.to_string());
    }
    let body = &lines[begin_idx + 1..end_idx];
    let mut b64 = String::new();
    let mut in_headers = true;
    for (i, line) in body.iter().enumerate() {
        if line.is_empty() {
            in_headers = false;
            continue;
        }
        if in_headers && line.contains(':') {
            // RFC 1421 headers of legacy PEM keys.
            if line
                .replace(' ', "")
                .eq_ignore_ascii_case("Proc-Type:4,ENCRYPTED")
            {
                return Err(ENCRYPTED_KEY.to_string());
            }
            continue;
        }
        in_headers = false;
        if !line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return Err(format!(
                "sshPrivateKey has a line that is not base64 (line {} of the key body); paste the key exactly as in the file.",
                i + 1
            ));
        }
        b64.push_str(line);
    }
    if b64.is_empty() {
        return Err(
            "sshPrivateKey has an empty key body between its BEGIN and END lines.".to_string(),
        );
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| {
            "sshPrivateKey's key body is not valid base64; paste the key exactly as in the file."
                .to_string()
        })?;
    if begin_label == "OPENSSH PRIVATE KEY" {
        let cipher = openssh_cipher(&decoded).ok_or_else(|| {
            "sshPrivateKey is not a valid OpenSSH private key (its body does not start with openssh-key-v1)."
                .to_string()
        })?;
        if cipher != b"none" {
            return Err(ENCRYPTED_KEY.to_string());
        }
    }
    Ok(())
}

/// The label of a `-----BEGIN <label>-----` / `-----END <label>-----` line. Labels are short
/// runs of `[A-Z0-9 ]`, so a label never carries key material into a message.
fn armor_label<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
    let label = line
        .strip_prefix("-----")?
        .strip_prefix(kind)?
        .strip_prefix(' ')?
        .strip_suffix("-----")?;
    let ok = !label.is_empty()
        && label.len() <= 40
        && label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ');
    ok.then_some(label)
}

/// The cipher name of an `openssh-key-v1` blob.
fn openssh_cipher(blob: &[u8]) -> Option<&[u8]> {
    let rest = blob.strip_prefix(OPENSSH_MAGIC)?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    rest.get(4..4 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssh_key(cipher: &str) -> String {
        let mut blob = OPENSSH_MAGIC.to_vec();
        blob.extend_from_slice(&(cipher.len() as u32).to_be_bytes());
        blob.extend_from_slice(cipher.as_bytes());
        blob.extend_from_slice(&[0, 0, 0, 4]);
        blob.extend_from_slice(b"none");
        blob.extend_from_slice(&[0u8; 40]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
        let body: Vec<String> = b64
            .as_bytes()
            .chunks(70)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            body.join("\n")
        )
    }

    proptest::proptest! {
        #[test]
        fn errors_never_quote_the_key(body in "[A-Za-z0-9+/=!@#_ -]{24,80}", framed in proptest::bool::ANY) {
            let key = if framed {
                format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----")
            } else {
                body.clone()
            };
            if let Err(e) = check_private_key(&key) {
                proptest::prop_assert!(!e.contains(body.trim()), "{}", e);
            }
        }
    }

    #[test]
    fn never_echoes_key_material() {
        let one_line = "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n-----END OPENSSH PRIVATE KEY-----";
        let err = check_private_key(one_line).unwrap_err();
        assert!(err.contains("literal \\n"), "{err}");
        assert!(!err.contains("b3Bl"));
        let weird = "-----BEGIN OPENSSH PRIVATE KEY-----b3BlbnNzaC1rZXktdjEAAAAA-----";
        let err = check_private_key(weird).unwrap_err();
        assert!(!err.contains("b3Bl"), "{err}");
        let bad_end =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nQUJD\n-----END b3BlbnNzaC1rZXktdjEAAAAA-----";
        let err = check_private_key(bad_end).unwrap_err();
        assert!(!err.contains("b3Bl"), "{err}");
    }

    #[test]
    fn accepts_unencrypted_openssh_key() {
        assert_eq!(check_private_key(&openssh_key("none")), Ok(()));
    }

    #[test]
    fn rejects_passphrase_openssh_key() {
        assert_eq!(
            check_private_key(&openssh_key("aes256-ctr")),
            Err(ENCRYPTED_KEY.to_string())
        );
    }

    #[test]
    fn rejects_legacy_encrypted_pem() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,ABC\n\nQUJD\n-----END RSA PRIVATE KEY-----";
        assert_eq!(check_private_key(key), Err(ENCRYPTED_KEY.to_string()));
        let pkcs8 =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nQUJD\n-----END ENCRYPTED PRIVATE KEY-----";
        assert_eq!(check_private_key(pkcs8), Err(ENCRYPTED_KEY.to_string()));
    }

    #[test]
    fn accepts_legacy_unencrypted_pem() {
        let key =
            "-----BEGIN RSA PRIVATE KEY-----\r\nQUJD\r\nREVG\r\n-----END RSA PRIVATE KEY-----\r\n";
        assert_eq!(check_private_key(key), Ok(()));
    }

    #[test]
    fn rejects_putty_public_and_broken_keys() {
        assert!(
            check_private_key("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none")
                .unwrap_err()
                .contains("PuTTY")
        );
        assert!(check_private_key("ssh-ed25519 AAAAC3Nz user@host")
            .unwrap_err()
            .contains("public key"));
        assert!(check_private_key("hello")
            .unwrap_err()
            .contains("-----BEGIN … PRIVATE KEY-----"));
        assert!(
            check_private_key("-----BEGIN OPENSSH PRIVATE KEY-----\nQUJD\n")
                .unwrap_err()
                .contains("missing its -----END OPENSSH PRIVATE KEY----- line")
        );
        assert!(check_private_key(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nQUJD\n-----END RSA PRIVATE KEY-----"
        )
        .unwrap_err()
        .contains("does not match"));
        assert_eq!(
            check_private_key(
                "-----BEGIN OPENSSH PRIVATE KEY-----\n\n-----END OPENSSH PRIVATE KEY-----"
            )
            .unwrap_err(),
            "sshPrivateKey has an empty key body between its BEGIN and END lines."
        );
        let err = check_private_key(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nQUJD\nnot base64!\n-----END OPENSSH PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(err.contains("line 2 of the key body"), "{err}");
        assert!(!err.contains("not base64!"));
    }
}
