namespace Treaty.Core.Model;

/// <summary>How often and how fast an operation is retried when its outcome is unknown.</summary>
/// <param name="MaxAttempts">Attempts before a forward step gives up (and the saga compensates) or a
/// compensation marks the transaction stuck.</param>
/// <param name="InitialDelayMs">Delay before the second attempt.</param>
/// <param name="MaxDelayMs">Cap of the exponential delay; also the cadence of retries once stuck.</param>
public sealed record RetryPolicy(int MaxAttempts, long InitialDelayMs, long MaxDelayMs)
{
    /// <summary>The policy used when neither the branch nor the transaction sets one.</summary>
    public static RetryPolicy Default { get; } = new(
        TreatyDefaults.MaxAttempts, TreatyDefaults.InitialDelayMs, TreatyDefaults.MaxDelayMs);
}

/// <summary>Every default in one place.</summary>
public static class TreatyDefaults
{
    public const int MaxAttempts = 5;
    public const long InitialDelayMs = 200;
    public const long MaxDelayMs = 30_000;
    public const long BranchTimeoutMs = 10_000;
    public const int MaxBranches = 64;
    public const int MaxGidLength = 128;
    public const int MaxNameLength = 64;
    public const int MaxUrlLength = 2048;
    public const long MaxTimeoutMs = 30L * 24 * 3600 * 1000;
    public const int MaxRetryAttempts = 1000;
    /// <summary>How long a choreographed saga may wait for its next event before it is stuck, when the last event named no <c>timeoutMs</c>.</summary>
    public const long ChoreographyTimeoutMs = 30_000;
    /// <summary>Events one choreographed saga may record (its message ids are kept for deduplication).</summary>
    public const int MaxChoreographyEvents = 1000;
}
