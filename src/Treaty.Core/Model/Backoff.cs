namespace Treaty.Core.Model;

/// <summary>Exponential backoff with jitter, as a pure function.</summary>
public static class Backoff
{
    /// <summary>
    /// Delay before attempt <paramref name="failedAttempts"/> + 1: the exponential delay
    /// <c>initial * 2^(failedAttempts-1)</c>, capped at <c>max</c>, with "equal jitter" (half fixed,
    /// half random) so retries of many transactions spread out but never collapse to zero.
    /// </summary>
    /// <param name="failedAttempts">Attempts that failed so far (at least 1).</param>
    /// <param name="policy">The retry policy.</param>
    /// <param name="random01">A random value in [0, 1).</param>
    public static TimeSpan Delay(int failedAttempts, RetryPolicy policy, double random01)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(failedAttempts, 1);
        var cap = Math.Max(0, policy.MaxDelayMs);
        var initial = Math.Clamp(policy.InitialDelayMs, 0, cap);
        var exponent = Math.Min(failedAttempts - 1, 62);
        // Double arithmetic cannot overflow; the cap bounds the result.
        var exponential = Math.Min(cap, initial * Math.Pow(2, exponent));
        var half = exponential / 2;
        var jitter = Math.Clamp(random01, 0, 1) * half;
        return TimeSpan.FromMilliseconds(Math.Min(cap, half + jitter));
    }
}
