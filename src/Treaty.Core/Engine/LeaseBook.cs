namespace Treaty.Core.Engine;

/// <summary>
/// The lease columns of an in-memory store (the test stores and the simulation's): owner, epoch
/// and expiry per gid, with the rules every <see cref="ITransactionStore"/> follows. Not thread-safe:
/// the store calls it under its own lock, with its own clock's reading as <c>now</c>.
/// </summary>
internal sealed class LeaseBook
{
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);

    /// <summary>The holder of a gid (null owner when nobody holds it).</summary>
    public (string? Owner, long Epoch, DateTimeOffset? Until) Peek(string gid) =>
        _entries.TryGetValue(gid, out var e) ? (e.Owner, e.Epoch, e.Until) : (null, 0, null);

    /// <summary>A new transaction was inserted: owned at epoch 1 when a lease was asked for (and it is not terminal).</summary>
    public void Inserted(string gid, LeaseRequest? lease, bool terminal, DateTimeOffset now) =>
        _entries[gid] = lease is null || terminal
            ? new Entry(null, lease is null ? 0 : 1, null)
            : new Entry(lease.Owner, 1, now + lease.Duration);

    /// <summary>Null when the write may go ahead; else why it is refused.</summary>
    public LeaseLostException? CheckWrite(string gid, Fence? fence)
    {
        var entry = _entries.GetValueOrDefault(gid);
        if (Fence.Admits(fence, entry.Owner, entry.Epoch))
        {
            return null;
        }

        return fence is { } f
            ? new LeaseLostException($"Transaction '{gid}' is held by {entry.Owner ?? "nobody"} at epoch {entry.Epoch}; the write was fenced by {f.Owner} at epoch {f.Epoch}.")
            : new LeaseLostException($"Transaction '{gid}' is held by {entry.Owner}; an unfenced write is refused.");
    }

    /// <summary>A write went through: a terminal state releases the lease.</summary>
    public void Written(string gid, bool terminal)
    {
        if (terminal && _entries.TryGetValue(gid, out var entry))
        {
            _entries[gid] = entry with { Owner = null, Until = null };
        }
    }

    /// <summary>True when a due-work claim may take the gid: nobody holds it or the lease expired.</summary>
    public bool IsFree(string gid, DateTimeOffset now)
    {
        var entry = _entries.GetValueOrDefault(gid);
        return entry.Owner is null || entry.Until <= now;
    }

    /// <summary>True when <see cref="ITransactionStore.ClaimAsync"/> may take the gid.</summary>
    public bool MayClaim(string gid, LeaseRequest lease, bool takeOver, DateTimeOffset now) =>
        takeOver || IsFree(gid, now) || string.Equals(_entries.GetValueOrDefault(gid).Owner, lease.Owner, StringComparison.Ordinal);

    /// <summary>Grants the gid to the lease's owner at the next epoch.</summary>
    public LeaseClaim Claim(string gid, LeaseRequest lease, DateTimeOffset now)
    {
        var epoch = _entries.GetValueOrDefault(gid).Epoch + 1;
        _entries[gid] = new Entry(lease.Owner, epoch, now + lease.Duration);
        return new LeaseClaim(gid, epoch);
    }

    /// <summary>Renews what the owner still holds at the same epoch; returns the gids not renewed.</summary>
    public List<string> Renew(LeaseRequest lease, IReadOnlyCollection<LeaseClaim> held, DateTimeOffset now)
    {
        var lost = new List<string>();
        foreach (var claim in held)
        {
            if (_entries.TryGetValue(claim.Gid, out var entry)
                && string.Equals(entry.Owner, lease.Owner, StringComparison.Ordinal)
                && entry.Epoch == claim.Epoch)
            {
                _entries[claim.Gid] = entry with { Until = now + lease.Duration };
            }
            else
            {
                lost.Add(claim.Gid);
            }
        }

        return lost;
    }

    /// <summary>Releases what the owner holds at the same epoch.</summary>
    public void Release(string owner, IReadOnlyCollection<LeaseClaim> held)
    {
        foreach (var claim in held)
        {
            if (_entries.TryGetValue(claim.Gid, out var entry)
                && string.Equals(entry.Owner, owner, StringComparison.Ordinal)
                && entry.Epoch == claim.Epoch)
            {
                _entries[claim.Gid] = entry with { Owner = null, Until = null };
            }
        }
    }

    /// <summary>Who holds what (see <see cref="ITransactionStore.ListHoldersAsync"/>). Only an
    /// unfinished transaction has an owner: a terminal write or insert leaves none.</summary>
    public List<LeaseHolder> Holders(DateTimeOffset now) =>
        [.. _entries
            .Where(e => e.Value.Owner is not null && e.Value.Until is not null)
            .GroupBy(e => e.Value.Owner!, StringComparer.Ordinal)
            .OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g =>
            {
                var until = g.Max(e => e.Value.Until!.Value);
                return new LeaseHolder(g.Key, g.LongCount(), until, until <= now);
            })];

    /// <summary>The gid's row was deleted.</summary>
    public void Remove(string gid) => _entries.Remove(gid);

    private readonly record struct Entry(string? Owner, long Epoch, DateTimeOffset? Until);
}
