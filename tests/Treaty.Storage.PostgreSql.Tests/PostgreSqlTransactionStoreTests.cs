using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Npgsql;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Testing;

namespace Treaty.Storage.PostgreSql.Tests;

/// <summary>What only the PostgreSQL store has: concurrent migration, schemas, batched notices, restarts.</summary>
[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlTransactionStoreTests(PostgresFixture postgres) : IAsyncLifetime
{
    private static readonly DateTimeOffset T0 = new(2026, 3, 1, 12, 0, 0, TimeSpan.Zero);
    private readonly List<PostgreSqlTransactionStore> _opened = [];
    private readonly CancellationTokenSource _timeout = new(TimeSpan.FromMinutes(2));

    private CancellationToken Ct => _timeout.Token;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var store in _opened)
        {
            await store.DisposeAsync();
        }

        _timeout.Dispose();
    }

    [Fact]
    public async Task Initialize_ManyInstancesAtOnce_MigrateOnceAndAllWork()
    {
        var cs = await postgres.Server.CreateDatabaseAsync("migrate");
        var stores = Enumerable.Range(0, 6).Select(_ => Open(cs)).ToList();

        await Task.WhenAll(stores.Select(s => Task.Run(() => s.InitializeAsync(Ct))));

        await stores[0].InsertAsync(NewState("m1"), [], Ct);
        (await stores[5].GetAsync("m1", Ct)).ShouldNotBeNull();
        await using var connection = new NpgsqlConnection(cs);
        await connection.OpenAsync(Ct);
        await using var command = new NpgsqlCommand("SELECT version FROM public.treaty_schema;", connection);
        (await command.ExecuteScalarAsync(Ct)).ShouldBe(1);
    }

    [Fact]
    public async Task Schema_TwoSchemasOnOneDatabase_AreSeparateStores()
    {
        var cs = await postgres.Server.CreateDatabaseAsync("schemas");
        var tenantA = Open(cs, "tenant_a");
        var plain = Open(cs);
        await tenantA.InitializeAsync(Ct);
        await plain.InitializeAsync(Ct);

        await tenantA.InsertAsync(NewState("only-a"), [], Ct);

        (await tenantA.GetAsync("only-a", Ct)).ShouldNotBeNull();
        (await plain.GetAsync("only-a", Ct)).ShouldBeNull();
        // Finish notices are per schema too.
        var waiting = plain.WhenFinishedAsync("only-a", Ct);
        await tenantA.UpdateAsync(NewState("only-a") with { Version = 2, Status = TransactionStatus.Committed, NextWakeAt = null }, [], Ct);
        await Task.Delay(500, Ct);
        waiting.IsCompleted.ShouldBeFalse();
    }

    [Fact]
    public async Task WhenFinished_ManyLongGidsFinishedElsewhere_AllWaitersWake()
    {
        // 600 gids of 120 characters are about 73 KB of notices: the sender has to split them
        // into payloads under PostgreSQL's 8000-byte limit.
        var cs = await postgres.Server.CreateDatabaseAsync("notify");
        var waiter = Open(cs);
        var writer = Open(cs);
        await waiter.InitializeAsync(Ct);
        await writer.InitializeAsync(Ct);
        var gids = Enumerable.Range(0, 600).Select(i => $"{i:D4}-".PadRight(120, 'g')).ToList();
        var waits = gids.Select(g => waiter.WhenFinishedAsync(g, Ct)).ToList();

        await Task.WhenAll(gids.Select(g => Task.Run(() => writer.InsertAsync(NewState(g) with { Status = TransactionStatus.Committed, NextWakeAt = null }, [], Ct))));

        await Task.WhenAll(waits).WaitAsync(TimeSpan.FromSeconds(30), Ct);
    }

    [Fact]
    public async Task Restart_TheStoreWorksAgain_AndTheListenerWakesEveryWaiterAfterReconnecting()
    {
        await using var server = await PostgresServer.StartAsync();
        var cs = await server.CreateDatabaseAsync("restart");
        var store = Open(cs);
        await store.InitializeAsync(Ct);
        await store.InsertAsync(NewState("r1"), [], Ct);
        var waiting = store.WhenFinishedAsync("finished-while-away", Ct);

        await server.RestartAsync();

        // Nothing finished it here: the reconnected listener wakes every waiter, since a finish
        // may have happened while it was not listening.
        await waiting.WaitAsync(TimeSpan.FromSeconds(30), Ct);
        // The pool may hand out a connection cut by the restart once; the store itself holds none.
        TransactionState? state = null;
        for (var attempt = 0; state is null && attempt < 20; attempt++)
        {
            try
            {
                state = await store.GetAsync("r1", Ct);
            }
            catch (NpgsqlException)
            {
                await Task.Delay(250, Ct);
            }
        }

        state.ShouldNotBeNull();
        await store.UpdateAsync(state with { Version = 2, Status = TransactionStatus.Committed, NextWakeAt = null }, [], Ct);
        var other = Open(cs);
        await other.InitializeAsync(Ct);
        var remote = other.WhenFinishedAsync("r2", Ct);
        await store.InsertAsync(NewState("r2") with { Status = TransactionStatus.Aborted, NextWakeAt = null }, [], Ct);
        await remote.WaitAsync(TimeSpan.FromSeconds(10), Ct);
    }

    [Theory]
    [InlineData(null, "public", "ConnectionString is required")]
    [InlineData("Host=127.0.0.1;Password=hunter2;Bogus Key=1", "public", "not a valid connection string")]
    [InlineData("Host=127.0.0.1", "Bad-Schema", "Schema must be")]
    [InlineData("Host=127.0.0.1", "", "Schema must be")]
    public void Options_Unusable_AreRejected_WithoutShowingThePassword(string? connectionString, string schema, string expected)
    {
        var options = new PostgreSqlStoreOptions { ConnectionString = connectionString, Schema = schema };

        var problems = string.Join(" ", options.Validate());

        problems.ShouldContain(expected);
        problems.ShouldNotContain("hunter2");
        Should.Throw<ArgumentException>(() => new PostgreSqlTransactionStore(options, NullLogger<PostgreSqlTransactionStore>.Instance));
    }

    [Theory]
    [InlineData("Host=127.0.0.1;Database=x", 32)]
    [InlineData("Host=127.0.0.1;Database=x;Max Auto Prepare=0", 0)]
    [InlineData("Host=127.0.0.1;Database=x;max auto prepare=5", 5)]
    public void AutoPrepare_OnByDefault_TheConnectionStringWins(string connectionString, int expected)
    {
        var store = Open(connectionString);

        store.EffectiveSettings.MaxAutoPrepare.ShouldBe(expected);
    }

    [Theory]
    [InlineData("Host=127.0.0.1;Database=x", true)]
    [InlineData("Host=127.0.0.1;Database=x;No Reset On Close=false", false)]
    [InlineData("Host=127.0.0.1;Database=x;noresetonclose=false", false)]
    public void NoResetOnClose_OnByDefault_TheConnectionStringWins_TheListenerIsNeverPooled(string connectionString, bool expected)
    {
        var store = Open(connectionString);

        store.EffectiveSettings.NoResetOnClose.ShouldBe(expected);
        store.EffectiveSettings.Pooling.ShouldBeTrue();
        store.ListenerSettings.Pooling.ShouldBeFalse();
    }

    [Fact]
    public async Task AddTreatyPostgreSqlStore_RegistersOneStoreAsTheTransactionStore_AndValidatesTheOptions()
    {
        var cs = await postgres.Server.CreateDatabaseAsync("di");
        await using (var provider = new ServiceCollection().AddTreatyPostgreSqlStore(o => o.ConnectionString = cs).BuildServiceProvider())
        {
            var store = provider.GetRequiredService<ITransactionStore>();
            store.ShouldBeSameAs(provider.GetRequiredService<PostgreSqlTransactionStore>());
            await store.InitializeAsync(Ct);
            (await store.InsertAsync(NewState("di"), [], Ct)).ShouldBeNull();
        }

        await using var broken = new ServiceCollection().AddTreatyPostgreSqlStore().BuildServiceProvider();
        Should.Throw<OptionsValidationException>(() => broken.GetRequiredService<IOptions<PostgreSqlStoreOptions>>().Value)
            .Message.ShouldContain("ConnectionString");
    }

    [Fact]
    public async Task Metrics_EveryWriteIsACommitOfOne_OnTheTreatyMeter_WithTheSqliteStoresNamesUnitsAndTags()
    {
        var cs = await postgres.Server.CreateDatabaseAsync("metrics");
        var store = Open(cs);
        await store.InitializeAsync(Ct);
        // Process-wide, but every class of this assembly is in one collection: nothing else writes now.
        using var metrics = new MetricRecorder("Treaty");

        foreach (var gid in new[] { "m-a", "m-b", "m-c" })
        {
            (await store.InsertAsync(NewState(gid), [], Ct)).ShouldBeNull();
        }

        (await store.InsertAsync(NewState("m-a"), [], Ct)).ShouldNotBeNull(); // a conflict: the statement still ran
        await store.UpdateAsync(NewState("m-b") with { Version = 2 }, [], Ct);
        var lease = new LeaseRequest("owner-m", TimeSpan.FromSeconds(30));
        var claim = (await store.ClaimAsync("m-c", lease, takeOver: false, Ct)).ShouldNotBeNull();
        await store.ReleaseAsync("owner-m", [claim], Ct);
        _ = await store.GetAsync("m-a", Ct); // a read is no write

        // 7 statements that write: 4 inserts, 1 update, 1 claim, 1 release.
        var batches = metrics.Of("treaty.store.batch.size");
        batches.Count.ShouldBe(7);
        batches.ShouldAllBe(m => m.Value == 1 && m.Unit == "{write}" && m.Tags.Count == 1 && m.Has("store", "postgresql"));
        var durations = metrics.Of("treaty.store.commit.duration");
        durations.Count.ShouldBe(7);
        durations.ShouldAllBe(m => m.Value > 0 && m.Value < 60_000 && m.Unit == "ms" && m.Tags.Count == 1 && m.Has("store", "postgresql"));
    }

    [Fact]
    public async Task ConcurrentWrites_GoAsOneBatch_EachWithItsOwnOutcome()
    {
        var cs = await postgres.Server.CreateDatabaseAsync("batch");
        var store = Open(cs);
        await store.InitializeAsync(Ct);
        (await store.InsertAsync(NewState("b-taken"), [], Ct)).ShouldBeNull();
        using var metrics = new MetricRecorder("Treaty");

        Task<TransactionState?>[] inserts;
        Task update, stale;
        using (store.Writes.Hold())
        {
            inserts = Enumerable.Range(0, 8).Select(i => store.InsertAsync(NewState($"b-{i}"), [Entry("submitted")], Ct))
                .Append(store.InsertAsync(NewState("b-taken"), [], Ct)) // a conflict, in the same batch
                .ToArray();
            update = store.UpdateAsync(NewState("b-taken") with { Version = 2 }, [Entry("decided")], Ct);
            stale = store.UpdateAsync(NewState("b-taken") with { Version = 5 }, [], Ct); // expects version 4
            await Task.Delay(200, Ct); // every write queued behind the hold
        }

        var results = await Task.WhenAll(inserts);
        results[..8].ShouldAllBe(r => r == null);
        results[8].ShouldNotBeNull().Gid.ShouldBe("b-taken");
        await update;
        await Should.ThrowAsync<ConcurrencyConflictException>(stale);
        for (var i = 0; i < 8; i++)
        {
            (await store.GetAsync($"b-{i}", Ct)).ShouldNotBeNull();
            (await store.GetJournalAsync($"b-{i}", Ct)).Select(j => j.Entry.Kind).ShouldBe(["submitted"]);
        }

        (await store.GetAsync("b-taken", Ct))!.Version.ShouldBe(2);
        store.Writes.Batches.ShouldBeGreaterThanOrEqualTo(1);
        metrics.Of("treaty.store.batch.size").ShouldContain(m => m.Value == 11);
    }

    [Fact]
    public async Task RenewAndRelease_GoInTheWriteBatch_BesideTheDecisions_NeverOnAConnectionOfTheirOwn()
    {
        // On a connection of its own a renew locked the instance's rows while its batch locked them
        // in another order: a deadlock, broken only after PostgreSQL's deadlock_timeout with every
        // write of the instance stalled. In the write queue it is one statement of the batch.
        var cs = await postgres.Server.CreateDatabaseAsync("renewbatch");
        var store = Open(cs);
        await store.InitializeAsync(Ct);
        var lease = new LeaseRequest("owner-a", TimeSpan.FromMinutes(1));
        foreach (var gid in new[] { "rb-x", "rb-y", "rb-z" })
        {
            (await store.InsertAsync(NewState(gid), [], lease, Ct)).ShouldBeNull();
        }

        var fence = new Fence("owner-a", 1);
        using var metrics = new MetricRecorder("Treaty");
        Task updateX, updateY, release;
        Task<IReadOnlyList<string>> renew;
        using (store.Writes.Hold())
        {
            updateX = store.UpdateAsync(NewState("rb-x") with { Version = 2 }, [Entry("decided")], fence, Ct);
            renew = store.RenewAsync(lease, [new LeaseClaim("rb-y", 1), new LeaseClaim("rb-x", 1), new LeaseClaim("rb-gone", 1)], Ct);
            release = store.ReleaseAsync("owner-a", [new LeaseClaim("rb-z", 1)], Ct);
            updateY = store.UpdateAsync(NewState("rb-y") with { Version = 2 }, [Entry("decided")], fence, Ct);
            await Task.Delay(200, Ct);
            renew.IsCompleted.ShouldBeFalse("the renew did not wait for the write queue");
            release.IsCompleted.ShouldBeFalse("the release did not wait for the write queue");
        }

        await Task.WhenAll(updateX, updateY, release);
        (await renew).ShouldBe(["rb-gone"]);
        metrics.Of("treaty.store.batch.size").ShouldContain(m => m.Value == 4);
        (await store.ClaimAsync("rb-z", new LeaseRequest("owner-b", TimeSpan.FromMinutes(1)), takeOver: false, Ct)).ShouldBe(new LeaseClaim("rb-z", 2));
        (await store.ClaimAsync("rb-x", new LeaseRequest("owner-b", TimeSpan.FromMinutes(1)), takeOver: false, Ct)).ShouldBeNull();
    }

    [Fact]
    public async Task ABatch_WithAStatementTheServerRefuses_WritesEveryOtherOne_AndFailsOnlyThatOne()
    {
        var cs = await postgres.Server.CreateDatabaseAsync("batchfail");
        var store = Open(cs);
        await store.InitializeAsync(Ct);

        Task<TransactionState?>[] good;
        Task<TransactionState?> bad;
        using (store.Writes.Hold())
        {
            good = Enumerable.Range(0, 5).Select(i => store.InsertAsync(NewState($"f-{i}"), [Entry("submitted")], Ct)).ToArray();
            // A journal row without a kind: NOT NULL refuses it, and the batch's implicit transaction with it.
            bad = store.InsertAsync(NewState("f-bad"), [Entry(null!)], Ct);
            await Task.Delay(200, Ct);
        }

        (await Task.WhenAll(good)).ShouldAllBe(r => r == null);
        (await Should.ThrowAsync<PostgresException>(bad)).SqlState.ShouldBe(PostgresErrorCodes.NotNullViolation);
        for (var i = 0; i < 5; i++)
        {
            (await store.GetAsync($"f-{i}", Ct)).ShouldNotBeNull();
        }

        (await store.GetAsync("f-bad", Ct)).ShouldBeNull();
    }

    private static JournalEntry Entry(string kind) => new(DateTimeOffset.UnixEpoch.AddDays(1), kind);

    private PostgreSqlTransactionStore Open(string connectionString, string schema = PostgreSqlStoreDefaults.Schema)
    {
        var store = new PostgreSqlTransactionStore(
            new PostgreSqlStoreOptions { ConnectionString = connectionString, Schema = schema },
            NullLogger<PostgreSqlTransactionStore>.Instance);
        _opened.Add(store);
        return store;
    }

    private static TransactionState NewState(string gid) =>
        new SagaMachine().Create(
            new TransactionSpec(gid, Protocol.Saga, "{}", [], TimeoutMs: 60_000, Retry: new RetryPolicy(3, 100, 1_000)),
            "fp", T0) with { Version = 1 };
}
