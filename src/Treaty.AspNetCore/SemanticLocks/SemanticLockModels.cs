namespace Treaty.AspNetCore.SemanticLocks;

/// <summary>How an attempt to take a semantic lock ended.</summary>
public enum SemanticLockOutcome
{
    /// <summary>Nobody held the resource; the gid holds it now.</summary>
    Acquired,

    /// <summary>The gid already held it (a retry or a later step of the same transaction); its expiry was renewed.</summary>
    Reentered,

    /// <summary>Another gid held it past its expiry; the lock now belongs to this gid.</summary>
    TakenOver,

    /// <summary>Another gid holds it and its lock has not expired; nothing changed.</summary>
    Refused,
}

/// <summary>Who holds a resource, since when, and until when the lock protects them.</summary>
/// <param name="Resource">The resource name, e.g. <c>order/42</c>.</param>
/// <param name="Gid">The global transaction that holds it.</param>
/// <param name="Since">When that gid took it.</param>
/// <param name="ExpiresAt">When another gid may take it over unless the holder renews it.</param>
public sealed record SemanticLockHolder(string Resource, string Gid, DateTimeOffset Since, DateTimeOffset ExpiresAt)
{
    /// <summary>Whether the lock has expired at <paramref name="now"/> (it still shows PROCESSING until someone takes it over or releases it).</summary>
    public bool IsExpiredAt(DateTimeOffset now) => now >= ExpiresAt;
}

/// <summary>The result of <see cref="SemanticLockManager.TryAcquireAsync"/>.</summary>
/// <param name="Outcome">What happened.</param>
/// <param name="Holder">The lock as it stands now: this gid's unless <see cref="Outcome"/> is <see cref="SemanticLockOutcome.Refused"/>, then the other holder's.</param>
/// <param name="Previous">The expired holder displaced by a <see cref="SemanticLockOutcome.TakenOver"/>, else null.</param>
public sealed record SemanticLockAttempt(SemanticLockOutcome Outcome, SemanticLockHolder Holder, SemanticLockHolder? Previous = null)
{
    /// <summary>True when the gid holds the lock after this attempt.</summary>
    public bool Acquired => Outcome != SemanticLockOutcome.Refused;
}
