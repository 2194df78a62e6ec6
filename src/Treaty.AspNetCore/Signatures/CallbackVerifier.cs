using System.Text;
using Microsoft.Extensions.Options;
using Treaty.Core.Security;

namespace Treaty.AspNetCore.Signatures;

/// <summary>The immutable runtime form of <see cref="TreatyCallbackVerificationOptions"/>: secrets as MAC keys, and the clock.</summary>
internal sealed class CallbackVerifier
{
    private readonly byte[][] _secrets;
    private readonly TimeProvider _time;

    public CallbackVerifier(IOptions<TreatyCallbackVerificationOptions> options, TimeProvider time)
    {
        _secrets = [.. options.Value.Secrets.Select(Encoding.UTF8.GetBytes)];
        _time = time;
    }

    /// <summary>False when no secret is configured: requests pass unverified.</summary>
    public bool Enabled => _secrets.Length > 0;

    /// <summary>Valid when any accepted secret verifies; otherwise the reason (missing, malformed, expired, mismatch).</summary>
    public SignatureCheck Verify(string? header, ReadOnlySpan<byte> body)
    {
        var now = _time.GetUtcNow();
        var check = SignatureCheck.Mismatch;
        foreach (var secret in _secrets)
        {
            check = CallbackSignature.Verify(secret, header, body, now);
            // Missing, malformed and expired do not depend on the secret: only a mismatch is worth another try.
            if (check != SignatureCheck.Mismatch)
            {
                return check;
            }
        }

        return check;
    }
}
