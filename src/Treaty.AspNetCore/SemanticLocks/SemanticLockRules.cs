namespace Treaty.AspNetCore.SemanticLocks;

/// <summary>The semantic lock's decision as a plain function of the current holder, the gid asking and the time.</summary>
internal static class SemanticLockRules
{
    public static SemanticLockOutcome Decide(SemanticLockHolder? current, string gid, DateTimeOffset now)
    {
        if (current is null)
        {
            return SemanticLockOutcome.Acquired;
        }

        if (string.Equals(current.Gid, gid, StringComparison.Ordinal))
        {
            return SemanticLockOutcome.Reentered;
        }

        return current.IsExpiredAt(now) ? SemanticLockOutcome.TakenOver : SemanticLockOutcome.Refused;
    }

    /// <summary>The lock after <paramref name="outcome"/>: a new or taken-over lock starts now; a re-entered one keeps its start.</summary>
    public static SemanticLockHolder After(SemanticLockOutcome outcome, SemanticLockHolder? current, string resource, string gid, DateTimeOffset now, TimeSpan timeout) => outcome switch
    {
        SemanticLockOutcome.Acquired or SemanticLockOutcome.TakenOver => new(resource, gid, now, now + timeout),
        SemanticLockOutcome.Reentered => current! with { ExpiresAt = now + timeout },
        SemanticLockOutcome.Refused => current!,
        _ => throw new ArgumentOutOfRangeException(nameof(outcome), outcome, null),
    };
}
