using Microsoft.Extensions.Options;

namespace Treaty.AspNetCore.Signatures;

/// <summary>
/// Settings of callback verification: which secrets a participant accepts on <c>Treaty-Signature</c>.
/// With no secret, verification is off and every endpoint passes through.
/// </summary>
/// <remarks>
/// Rotation: accept the new and the old secret (<c>Secrets = [new, old]</c>), switch the coordinator's
/// <c>--callback-secret</c> to the new one, then remove the old one here. The first secret is the
/// current one; the coordinator signs with that one.
/// </remarks>
public sealed class TreatyCallbackVerificationOptions
{
    /// <summary>
    /// Every accepted secret, the current one first; each at least
    /// <see cref="TreatyCallbackVerificationDefaults.MinSecretLength"/> characters. The MAC key is
    /// the UTF-8 bytes of the string, as on the coordinator. Never logged.
    /// </summary>
    public IList<string> Secrets { get; } = new List<string>();

    /// <summary>
    /// The single accepted secret: reads the first of <see cref="Secrets"/>; setting it replaces
    /// the whole list with this one secret (null clears it, which turns verification off).
    /// </summary>
    public string? Secret
    {
        get => Secrets.Count > 0 ? Secrets[0] : null;
        set
        {
            Secrets.Clear();
            if (value is not null)
            {
                Secrets.Add(value);
            }
        }
    }
}

/// <summary>Every callback verification constant in one place.</summary>
public static class TreatyCallbackVerificationDefaults
{
    /// <summary>Shortest accepted secret (the coordinator enforces the same).</summary>
    public const int MinSecretLength = 16;

    /// <summary>The problem+json <c>type</c> of a 401 for a branch call whose signature does not verify.</summary>
    public const string ProblemType = "https://treaty.dev/problems/invalid-signature";
}

/// <summary>Checked at start (<c>ValidateOnStart</c>); the messages name positions, never values.</summary>
internal sealed class TreatyCallbackVerificationOptionsValidator : IValidateOptions<TreatyCallbackVerificationOptions>
{
    public ValidateOptionsResult Validate(string? name, TreatyCallbackVerificationOptions options)
    {
        var problems = new List<string>();
        for (var i = 0; i < options.Secrets.Count; i++)
        {
            var secret = options.Secrets[i];
            if (string.IsNullOrWhiteSpace(secret) || secret.Length < TreatyCallbackVerificationDefaults.MinSecretLength)
            {
                problems.Add($"Treaty callback secret #{i + 1} must be at least {TreatyCallbackVerificationDefaults.MinSecretLength} characters.");
            }
        }

        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}
