using Treaty.Core.Contracts;

namespace Treaty.Client;

/// <summary>How often and how fast the coordinator retries an operation whose outcome is unknown.</summary>
/// <param name="MaxAttempts">Attempts before a forward step gives up (and the saga compensates) or a
/// compensation marks the transaction stuck.</param>
/// <param name="InitialDelay">Delay before the second attempt; it doubles on every further attempt.</param>
/// <param name="MaxDelay">Cap of the delay.</param>
public sealed record RetrySettings(int MaxAttempts, TimeSpan InitialDelay, TimeSpan MaxDelay)
{
    internal RetryPolicyRequest ToRequest() => new()
    {
        MaxAttempts = MaxAttempts,
        InitialDelayMs = (long)InitialDelay.TotalMilliseconds,
        MaxDelayMs = (long)MaxDelay.TotalMilliseconds,
    };
}
