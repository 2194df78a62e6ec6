using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.SemanticLocks;
using Treaty.AspNetCore.Tests.Barrier;
using Treaty.AspNetCore.Tests.Support;

namespace Treaty.AspNetCore.Tests.SemanticLocks;

/// <summary>
/// The semantic locks against every participant database
/// (<see cref="SqliteSemanticLockTests"/>, <see cref="PostgreSqlSemanticLockTests"/>).
/// </summary>
public abstract class SemanticLockCompliance : IAsyncLifetime
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(10);
    private readonly ManualTimeProvider _time = new();
    private TestDatabase _database = null!;
    private SemanticLockManager _locks = null!;

    private ParticipantDatabase Database => _database.Database;

    protected abstract Task<TestDatabase> CreateDatabaseAsync();

    public async Task InitializeAsync()
    {
        _database = await CreateDatabaseAsync();
        await SemanticLockManager.EnsureSchemaAsync(Database, CancellationToken.None);
        await SemanticLockManager.EnsureSchemaAsync(Database, CancellationToken.None); // idempotent
        _locks = new SemanticLockManager(new SemanticLockOptions { Timeout = Timeout }, _time);
    }

    public async Task DisposeAsync()
    {
        if (_database is not null)
        {
            await _database.DisposeAsync();
        }
    }

    private async Task<SemanticLockAttempt> AcquireAsync(string resource, string gid, bool commit = true)
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        var attempt = await _locks.TryAcquireAsync(transaction, resource, gid, CancellationToken.None);
        if (commit)
        {
            await transaction.CommitAsync(CancellationToken.None);
        }

        return attempt;
    }

    private async Task<bool> ReleaseAsync(string resource, string gid)
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        var released = await _locks.ReleaseAsync(transaction, resource, gid, CancellationToken.None);
        await transaction.CommitAsync(CancellationToken.None);
        return released;
    }

    private async Task<SemanticLockHolder?> HolderAsync(string resource)
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        return await _locks.GetHolderAsync(transaction, resource, CancellationToken.None);
    }

    [Fact]
    public async Task TryAcquire_FreeResource_IsAcquired_AndReadersSeeTheHolder()
    {
        var start = _time.GetUtcNow();

        var attempt = await AcquireAsync("order/1", "gid-a");

        attempt.Outcome.ShouldBe(SemanticLockOutcome.Acquired);
        attempt.Acquired.ShouldBeTrue();
        var holder = await HolderAsync("order/1");
        holder.ShouldBe(new SemanticLockHolder("order/1", "gid-a", start, start + Timeout));
        (await HolderAsync("order/2")).ShouldBeNull();
    }

    [Fact]
    public async Task TryAcquire_HeldByAnotherGid_IsRefused_AndChangesNothing()
    {
        await AcquireAsync("order/1", "gid-a");
        _time.Advance(TimeSpan.FromMinutes(9));

        var attempt = await AcquireAsync("order/1", "gid-b");

        attempt.Outcome.ShouldBe(SemanticLockOutcome.Refused);
        attempt.Acquired.ShouldBeFalse();
        attempt.Holder.Gid.ShouldBe("gid-a");
        (await HolderAsync("order/1"))!.Gid.ShouldBe("gid-a");
    }

    [Fact]
    public async Task TryAcquire_BySameGid_Reenters_AndRenewsTheExpiry()
    {
        var start = _time.GetUtcNow();
        await AcquireAsync("order/1", "gid-a");
        _time.Advance(TimeSpan.FromMinutes(8));

        var again = await AcquireAsync("order/1", "gid-a");
        _time.Advance(TimeSpan.FromMinutes(8)); // 16 minutes after the first acquire, 8 after the renewal

        again.Outcome.ShouldBe(SemanticLockOutcome.Reentered);
        again.Holder.Since.ShouldBe(start);
        again.Holder.ExpiresAt.ShouldBe(start + TimeSpan.FromMinutes(8) + Timeout);
        (await AcquireAsync("order/1", "gid-b")).Outcome.ShouldBe(SemanticLockOutcome.Refused);
    }

    [Fact]
    public async Task Release_ByTheHolder_FreesTheResource_ForAnotherGid()
    {
        await AcquireAsync("stock/sku-1", "gid-a");

        (await ReleaseAsync("stock/sku-1", "gid-b")).ShouldBeFalse(); // not the holder: nothing happens
        (await HolderAsync("stock/sku-1"))!.Gid.ShouldBe("gid-a");
        (await ReleaseAsync("stock/sku-1", "gid-a")).ShouldBeTrue();
        (await ReleaseAsync("stock/sku-1", "gid-a")).ShouldBeFalse(); // idempotent

        (await HolderAsync("stock/sku-1")).ShouldBeNull();
        (await AcquireAsync("stock/sku-1", "gid-b")).Outcome.ShouldBe(SemanticLockOutcome.Acquired);
    }

    [Fact]
    public async Task TryAcquire_AfterTheTimeout_TakesOverTheExpiredLock()
    {
        var start = _time.GetUtcNow();
        await AcquireAsync("order/1", "gid-a");
        _time.Advance(Timeout);

        (await HolderAsync("order/1"))!.IsExpiredAt(_time.GetUtcNow()).ShouldBeTrue();
        var attempt = await AcquireAsync("order/1", "gid-b");

        attempt.Outcome.ShouldBe(SemanticLockOutcome.TakenOver);
        attempt.Previous!.Gid.ShouldBe("gid-a");
        attempt.Previous.Since.ShouldBe(start);
        attempt.Holder.ShouldBe(new SemanticLockHolder("order/1", "gid-b", start + Timeout, start + Timeout + Timeout));
        (await ReleaseAsync("order/1", "gid-a")).ShouldBeFalse(); // the old holder no longer owns it
        (await AcquireAsync("order/1", "gid-a")).Outcome.ShouldBe(SemanticLockOutcome.Refused);
    }

    [Fact]
    public async Task TryAcquire_InARolledBackTransaction_LeavesNoLock()
    {
        (await AcquireAsync("order/1", "gid-a", commit: false)).Outcome.ShouldBe(SemanticLockOutcome.Acquired);

        (await HolderAsync("order/1")).ShouldBeNull();
        (await AcquireAsync("order/1", "gid-b")).Outcome.ShouldBe(SemanticLockOutcome.Acquired);
    }

    [Fact]
    public async Task ReleaseAll_FreesEveryLockOfTheGid_Only()
    {
        await AcquireAsync("order/1", "gid-a");
        await AcquireAsync("reservation/1", "gid-a");
        await AcquireAsync("order/2", "gid-b");

        await using (var transaction = await Database.BeginAsync(CancellationToken.None))
        {
            (await _locks.ReleaseAllAsync(transaction, "gid-a", CancellationToken.None)).ShouldBe(2);
            await transaction.CommitAsync(CancellationToken.None);
        }

        (await HolderAsync("order/1")).ShouldBeNull();
        (await HolderAsync("reservation/1")).ShouldBeNull();
        (await HolderAsync("order/2"))!.Gid.ShouldBe("gid-b");
    }

    [Fact]
    public async Task GetHolder_OnAPlainConnection_SeesCommittedLocks()
    {
        await AcquireAsync("order/7", "gid-a");

        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        var holder = await _locks.GetHolderAsync(transaction.Connection, "order/7", CancellationToken.None, transaction.Transaction);

        holder!.Gid.ShouldBe("gid-a");
    }

    [Fact]
    public async Task TryAcquire_ConcurrentGids_ExactlyOneWins()
    {
        var gids = Enumerable.Range(0, 12).Select(i => $"gid-{i}").ToArray();

        var attempts = await Task.WhenAll(gids.Select(gid => Task.Run(() => AcquireAsync("seat/12A", gid))));

        attempts.Count(a => a.Outcome == SemanticLockOutcome.Acquired).ShouldBe(1);
        attempts.Count(a => a.Outcome == SemanticLockOutcome.Refused).ShouldBe(gids.Length - 1);
        var winner = attempts.Single(a => a.Acquired).Holder.Gid;
        attempts.Where(a => !a.Acquired).ShouldAllBe(a => a.Holder.Gid == winner);
        (await HolderAsync("seat/12A"))!.Gid.ShouldBe(winner);
    }

    [Fact]
    public void Options_WithANonPositiveTimeout_AreRejected()
    {
        new SemanticLockOptions { Timeout = TimeSpan.Zero }.Validate().ShouldNotBeEmpty();
        new SemanticLockOptions().Validate().ShouldBeEmpty();
        Should.Throw<ArgumentException>(() => new SemanticLockManager(new SemanticLockOptions { Timeout = TimeSpan.FromSeconds(-1) }, _time));
    }
}

public sealed class SqliteSemanticLockTests : SemanticLockCompliance
{
    protected override Task<TestDatabase> CreateDatabaseAsync() => Task.FromResult(TestDatabase.Sqlite("semlock"));
}

[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlSemanticLockTests(PostgresFixture postgres) : SemanticLockCompliance
{
    protected override Task<TestDatabase> CreateDatabaseAsync() => TestDatabase.PostgreSqlAsync(postgres, "semlock");
}
