namespace Treaty.Core.Engine;

/// <summary>
/// Who asks for leases, and for how long each grant or renewal lasts. Several coordinator
/// instances share one store; each has its own <see cref="Owner"/>. A lease expires by the store's
/// clock (the database's, for a server database), never by the asking instance's.
/// </summary>
public sealed record LeaseRequest
{
    /// <summary>The longest owner name a store keeps.</summary>
    public const int MaxOwnerLength = 200;

    /// <exception cref="ArgumentException">The owner is empty or longer than <see cref="MaxOwnerLength"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The duration is not positive.</exception>
    public LeaseRequest(string owner, TimeSpan duration)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(owner);
        if (owner.Length > MaxOwnerLength)
        {
            throw new ArgumentException($"A lease owner is at most {MaxOwnerLength} characters.", nameof(owner));
        }

        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(duration, TimeSpan.Zero);
        Owner = owner;
        Duration = duration;
    }

    /// <summary>The instance asking.</summary>
    public string Owner { get; }

    /// <summary>How long a grant or a renewal lasts.</summary>
    public TimeSpan Duration { get; }

    /// <summary>The fence of a claim granted to this owner.</summary>
    public Fence FenceOf(LeaseClaim claim)
    {
        ArgumentNullException.ThrowIfNull(claim);
        return new Fence(Owner, claim.Epoch);
    }
}

/// <summary>Defaults of the lease a coordinator instance asks for.</summary>
public static class LeaseDefaults
{
    /// <summary>How long a lease lasts without renewal: how long a dead instance's transactions wait
    /// before another instance takes them over.</summary>
    public static readonly TimeSpan Duration = TimeSpan.FromSeconds(15);

    /// <summary>A name for this process, unique among the instances sharing a store.</summary>
    public static string NewOwner() =>
        $"{Environment.MachineName}:{Environment.ProcessId}:{Guid.NewGuid().ToString("N")[..8]}";
}

/// <summary>
/// The right to write one transaction: its owner and the epoch of the grant. Every claim of a
/// transaction raises its epoch, so a write under an older epoch (a stale owner waking up late) is
/// refused by the store.
/// </summary>
public readonly record struct Fence(string Owner, long Epoch)
{
    /// <summary>
    /// True when a write under <paramref name="fence"/> may change a transaction held by
    /// <paramref name="owner"/> at <paramref name="epoch"/>: the fence names that holder at that
    /// epoch, or, for an unfenced write (null), nobody holds it. Every store applies this rule, and
    /// applies it before the version check, so a stale owner learns that it lost the transaction
    /// even when the new owner has written since.
    /// </summary>
    public static bool Admits(Fence? fence, string? owner, long epoch) =>
        fence is { } f ? string.Equals(owner, f.Owner, StringComparison.Ordinal) && epoch == f.Epoch : owner is null;
}

/// <summary>A transaction granted to an owner at <see cref="Epoch"/>.</summary>
public sealed record LeaseClaim(string Gid, long Epoch);

/// <summary>
/// A fenced write was refused: another owner claimed the transaction (its epoch moved on), or it
/// is finished and released. The writer no longer drives it.
/// </summary>
public sealed class LeaseLostException : ConcurrencyConflictException
{
    public LeaseLostException()
    {
    }

    public LeaseLostException(string message) : base(message)
    {
    }

    public LeaseLostException(string message, Exception innerException) : base(message, innerException)
    {
    }
}
