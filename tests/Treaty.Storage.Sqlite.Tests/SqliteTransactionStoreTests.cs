using System.Globalization;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Storage.Sqlite.Tests;

/// <summary>What only the SQLite store promises: its pragmas, group commit, schema migration.</summary>
public sealed class SqliteTransactionStoreTests : IAsyncLifetime
{
    private static readonly DateTimeOffset T0 = new(2026, 3, 1, 12, 0, 0, TimeSpan.Zero);
    private readonly TempDatabase _database = new();
    private readonly CancellationTokenSource _timeout = new(TimeSpan.FromMinutes(2));
    private SqliteTransactionStore _store = null!;

    private CancellationToken Ct => _timeout.Token;

    public async Task InitializeAsync()
    {
        _store = _database.Open();
        await _store.InitializeAsync(Ct);
    }

    public async Task DisposeAsync()
    {
        await _store.DisposeAsync();
        _database.Dispose();
        _timeout.Dispose();
    }

    [Fact]
    public async Task WriterConnection_UsesWalSynchronousFullAndABusyTimeout()
    {
        var pragmas = await _store.QueryWriterAsync(
            c => (Schema.Pragma(c, "PRAGMA journal_mode;"), Schema.Pragma(c, "PRAGMA synchronous;"), Schema.Pragma(c, "PRAGMA busy_timeout;")),
            Ct);

        pragmas.Item1.ShouldBe("wal");
        pragmas.Item2.ShouldBe("2", "synchronous=FULL is 2");
        pragmas.Item3.ShouldBe(SqliteStoreDefaults.BusyTimeoutMs.ToString(CultureInfo.InvariantCulture));
    }

    [Fact]
    public void DatabaseFile_IsInWalModeForEveryConnection()
    {
        // journal_mode=WAL is persistent: a connection that never asked for it sees it.
        _database.Scalar("PRAGMA journal_mode;").ShouldBe("wal");
        File.Exists(_database.Path).ShouldBeTrue();
    }

    [Fact]
    public async Task Batch_WithConflictingWrites_CommitsTheOthersInOneTransaction()
    {
        var existing = NewState("existing");
        var stale = NewState("stale");
        await _store.InsertAsync(existing, [], Ct);
        await _store.InsertAsync(stale, [], Ct);
        var batchesBefore = _store.CommittedBatches;

        Task<TransactionState?> insertNew, insertExisting, insertAfter;
        Task updateStale, updateGood;
        using (_store.HoldWriter())
        {
            insertNew = _store.InsertAsync(NewState("fresh"), [Entry("fresh")], Ct);
            updateStale = _store.UpdateAsync(stale with { Version = 5 }, [Entry("stale")], Ct);
            insertExisting = _store.InsertAsync(NewState("existing") with { Fingerprint = "other" }, [Entry("existing")], Ct);
            updateGood = _store.UpdateAsync(stale with { Version = 2, Reason = "moved" }, [Entry("good")], Ct);
            insertAfter = _store.InsertAsync(NewState("after"), [Entry("after")], Ct);
            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, Ct);
            insertNew.IsCompleted.ShouldBeFalse("the writer is held");
        }

        (await insertNew).ShouldBeNull();
        await Should.ThrowAsync<ConcurrencyConflictException>(() => updateStale);
        (await insertExisting)!.Fingerprint.ShouldBe(existing.Fingerprint);
        await updateGood;
        (await insertAfter).ShouldBeNull();
        (_store.CommittedBatches - batchesBefore).ShouldBe(1, "all five writes went in one batch");
        (await _store.GetAsync("fresh", Ct)).ShouldNotBeNull();
        (await _store.GetAsync("after", Ct)).ShouldNotBeNull();
        (await _store.GetAsync("stale", Ct))!.Reason.ShouldBe("moved");
        (await _store.GetJournalAsync("stale", Ct)).Select(r => r.Entry.Detail).ShouldBe(["good"]);
        (await _store.GetJournalAsync("existing", Ct)).ShouldBeEmpty();
    }

    [Fact]
    public async Task Batch_WriteFailingHalfway_RollsBackItsStateRowAndOnlyItFails()
    {
        var victim = NewState("victim");
        var bystander = NewState("bystander");
        await _store.InsertAsync(victim, [Entry("v1")], Ct);
        await _store.InsertAsync(bystander, [], Ct);
        // A trigger makes the second journal row of the victim's update fail after its state row
        // was already replaced: only a per-write savepoint can undo that row.
        _database.Execute("CREATE TRIGGER boom BEFORE INSERT ON journal WHEN NEW.detail = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END;");
        var batchesBefore = _store.CommittedBatches;

        Task failing, other, inserted;
        using (_store.HoldWriter())
        {
            other = _store.UpdateAsync(bystander with { Version = 2 }, [Entry("ok")], Ct);
            failing = _store.UpdateAsync(victim with { Version = 2, Reason = "must not stick" }, [Entry("first"), Entry("boom")], Ct);
            inserted = _store.InsertAsync(NewState("late"), [Entry("late")], Ct);
        }

        (await Should.ThrowAsync<SqliteException>(() => failing)).Message.ShouldContain("boom");
        await other;
        await inserted;
        (_store.CommittedBatches - batchesBefore).ShouldBe(1);
        var stored = await _store.GetAsync("victim", Ct);
        stored!.Version.ShouldBe(1);
        stored.Reason.ShouldBeNull();
        (await _store.GetJournalAsync("victim", Ct)).Select(r => r.Entry.Detail).ShouldBe(["v1"]);
        (await _store.GetAsync("bystander", Ct))!.Version.ShouldBe(2);
        (await _store.GetJournalAsync("late", Ct)).Single().Entry.Detail.ShouldBe("late");
    }

    [Fact]
    public async Task Batches_NeverExceedMaxBatchSize()
    {
        await _store.DisposeAsync();
        _store = _database.Open(maxBatchSize: 3);
        await _store.InitializeAsync(Ct);
        var before = _store.CommittedBatches;

        Task<TransactionState?>[] writes;
        using (_store.HoldWriter())
        {
            writes = Enumerable.Range(0, 10).Select(i => _store.InsertAsync(NewState($"b{i}"), [], Ct)).ToArray();
        }

        (await Task.WhenAll(writes)).ShouldAllBe(r => r == null);
        (_store.CommittedBatches - before).ShouldBe(4);
    }

    [Fact]
    public async Task Dispose_CommitsWritesStillQueued()
    {
        Task<TransactionState?>[] writes;
        using (_store.HoldWriter())
        {
            writes = Enumerable.Range(0, 300).Select(i => _store.InsertAsync(NewState($"q{i:D3}"), [Entry("queued")], Ct)).ToArray();
            var disposing = _store.DisposeAsync().AsTask();
            (await Task.WhenAll(writes)).ShouldAllBe(r => r == null);
            await disposing;
        }

        _store = _database.Open();
        for (var i = 0; i < 300; i++)
        {
            (await _store.GetAsync($"q{i:D3}", Ct)).ShouldNotBeNull();
        }
    }

    [Fact]
    public async Task AfterDispose_WritesAndReadsThrowObjectDisposed()
    {
        await _store.DisposeAsync();

        await Should.ThrowAsync<ObjectDisposedException>(() => _store.InsertAsync(NewState("late"), [], Ct));
        await Should.ThrowAsync<ObjectDisposedException>(() => _store.GetAsync("late", Ct));
    }

    [Fact]
    public async Task FirstCall_WithoutInitialize_InitializesTheStore()
    {
        await _store.DisposeAsync();
        _store = _database.Open();

        (await _store.InsertAsync(NewState("lazy"), [], Ct)).ShouldBeNull();

        (await _store.GetAsync("lazy", Ct)).ShouldNotBeNull();
    }

    [Fact]
    public async Task OpeningTwice_KeepsRowsAndTheSchemaVersion()
    {
        await _store.InsertAsync(NewState("kept"), [Entry("kept")], Ct);
        await _store.DisposeAsync();
        var objects = _database.Scalar("SELECT count(*) FROM sqlite_schema;");

        _store = _database.Open();
        await _store.InitializeAsync(Ct);
        await _store.DisposeAsync();
        _store = _database.Open();
        await _store.InitializeAsync(Ct);

        (await _store.GetAsync("kept", Ct)).ShouldNotBeNull();
        (await _store.GetJournalAsync("kept", Ct)).Single().Entry.Detail.ShouldBe("kept");
        _database.Scalar("PRAGMA user_version;").ShouldBe((long)Schema.CurrentVersion);
        _database.Scalar("SELECT count(*) FROM sqlite_schema;").ShouldBe(objects);
    }

    [Fact]
    public async Task ExistingDatabaseWithoutSchema_IsMigratedAndItsOtherTablesKept()
    {
        await _store.DisposeAsync();
        using var other = new TempDatabase();
        other.Execute("CREATE TABLE operator_notes (id INTEGER PRIMARY KEY, note TEXT); INSERT INTO operator_notes (note) VALUES ('keep me');");
        other.Scalar("PRAGMA user_version;").ShouldBe(0L);

        _store = other.Open();
        await _store.InitializeAsync(Ct);
        await _store.InsertAsync(NewState("migrated"), [], Ct);

        other.Scalar("PRAGMA user_version;").ShouldBe((long)Schema.CurrentVersion);
        other.Scalar("SELECT note FROM operator_notes;").ShouldBe("keep me");
        (await _store.GetAsync("migrated", Ct)).ShouldNotBeNull();
        await _store.DisposeAsync();
    }

    [Fact]
    public async Task Update_WritesOnlyTheProgress_TheSpecIsWrittenOnceAtTheInsert()
    {
        // A 4 KiB payload: in the spec, stored once.
        var payload = "{\"note\":\"" + new string('x', 4096) + "\"}";
        var state = new SagaMachine().Create(new TransactionSpec("big", Protocol.Saga, payload, [], null, null), "fp-big", T0) with { Version = 1 };
        await _store.InsertAsync(state, [], Ct);

        await _store.UpdateAsync(state with { Version = 2, UpdatedAt = T0.AddSeconds(1) }, [], Ct);

        var (spec, progress) = await _store.QueryWriterAsync(connection =>
        {
            using var command = connection.CreateCommand();
            command.CommandText = "SELECT length(spec_json), length(state_json) FROM transactions WHERE gid = 'big';";
            using var reader = command.ExecuteReader();
            reader.Read();
            return (reader.GetInt64(0), reader.GetInt64(1));
        }, Ct);
        spec.ShouldBeGreaterThan(4096);
        progress.ShouldBeLessThan(1024, "a decision rewrites the progress, not the definition");
        (await _store.GetAsync("big", Ct)).ShouldNotBeNull().Spec.PayloadJson.ShouldBe(payload);
    }

    [Fact]
    public async Task Version1Database_GainsTheTimelineColumnsAndKeepsItsRows()
    {
        await _store.DisposeAsync();
        using var v1 = new TempDatabase();
        // The version 1 schema exactly as the first release wrote it, with one transaction and its journal.
        var old = NewState("from-v1");
        v1.Execute(Version1Schema + "PRAGMA user_version = 1;");
        using (var connection = v1.Connect())
        {
            using var insert = connection.CreateCommand();
            insert.CommandText =
                """
                INSERT INTO transactions VALUES ($gid, 'saga', 'pending', 0, $t, $t, NULL, 'fp', 1, $json);
                INSERT INTO journal (gid, at, kind, branch, op, attempt, status_code, detail) VALUES ($gid, $t, 'attempt-failed', 'pay', 'action', 1, 503, 'busy');
                """;
            insert.Parameters.AddWithValue("$gid", old.Gid);
            insert.Parameters.AddWithValue("$t", T0.UtcTicks);
            // The whole state as one TEXT, as every row was written before schema 5.
            insert.Parameters.AddWithValue("$json", System.Text.Json.JsonSerializer.Serialize(old, Treaty.Core.Serialization.TreatyJsonContext.Default.TransactionState));
            insert.ExecuteNonQuery();
        }

        _store = v1.Open();
        await _store.InitializeAsync(Ct);
        var answered = new JournalEntry(T0.AddSeconds(1), JournalKinds.AttemptSucceeded, "pay", "action", 2, 200, null, DurationMs: 42, Body: "{\"ok\":true}");
        await _store.UpdateAsync(old with { Version = 2 }, [answered], Ct);

        v1.Scalar("PRAGMA user_version;").ShouldBe((long)Schema.CurrentVersion);
        var journal = await _store.GetJournalAsync(old.Gid, Ct);
        journal.Select(r => r.Entry).ShouldBe(
        [
            new JournalEntry(T0, JournalKinds.AttemptFailed, "pay", "action", 1, 503, "busy"),
            answered,
        ]);
        journal[0].Entry.DurationMs.ShouldBeNull();
        journal[0].Entry.Body.ShouldBeNull();
        var migrated = (await _store.GetAsync(old.Gid, Ct)).ShouldNotBeNull();
        migrated.Version.ShouldBe(2);
        // The spec was copied out of the old row, so a decision that writes only progress keeps it.
        System.Text.Json.JsonSerializer.Serialize(migrated, Treaty.Core.Serialization.TreatyJsonContext.Default.TransactionState)
            .ShouldBe(System.Text.Json.JsonSerializer.Serialize(old with { Version = 2 }, Treaty.Core.Serialization.TreatyJsonContext.Default.TransactionState));
        await _store.DisposeAsync();
    }

    private const string Version1Schema =
        """
        CREATE TABLE transactions (
            gid TEXT NOT NULL PRIMARY KEY, protocol TEXT NOT NULL, status TEXT NOT NULL, stuck INTEGER NOT NULL,
            created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, next_wake_at INTEGER NULL,
            fingerprint TEXT NOT NULL, version INTEGER NOT NULL, state_json TEXT NOT NULL);
        CREATE INDEX ix_transactions_created ON transactions (created_at DESC, gid DESC);
        CREATE INDEX ix_transactions_status_created ON transactions (status, created_at DESC, gid DESC);
        CREATE INDEX ix_transactions_stuck_created ON transactions (created_at DESC, gid DESC) WHERE stuck = 1;
        CREATE INDEX ix_transactions_due ON transactions (coalesce(next_wake_at, -1), gid) WHERE status NOT IN ('committed', 'aborted');
        CREATE TABLE journal (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, gid TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL,
            branch TEXT NULL, op TEXT NULL, attempt INTEGER NULL, status_code INTEGER NULL, detail TEXT NULL);
        CREATE INDEX ix_journal_gid ON journal (gid, seq);

        """;

    [Fact]
    public async Task DatabaseFromANewerVersion_IsRefused()
    {
        await _store.DisposeAsync();
        using var newer = new TempDatabase();
        newer.Execute("PRAGMA user_version = 99;");

        _store = newer.Open();

        (await Should.ThrowAsync<InvalidOperationException>(() => _store.InitializeAsync(Ct))).Message.ShouldContain("99");
        newer.Scalar("PRAGMA user_version;").ShouldBe(99L);
        await _store.DisposeAsync();
    }

    [Fact]
    public async Task Queries_UseTheirIndexes()
    {
        await _store.InsertAsync(NewState("plan"), [], Ct);

        Plan($"SELECT gid FROM transactions WHERE {Schema.DueFilter} ORDER BY {Schema.DueKey}, gid LIMIT 10", ("$due_by", 0L))
            .ShouldContain("ix_transactions_due");
        Plan("SELECT gid FROM transactions WHERE 1 = 1 AND (created_at, gid) < ($c, $g) ORDER BY created_at DESC, gid DESC LIMIT 5", ("$c", 0L), ("$g", "x"))
            .ShouldContain("ix_transactions_created");
        Plan("SELECT gid FROM transactions WHERE 1 = 1 AND stuck = 1 ORDER BY created_at DESC, gid DESC LIMIT 5")
            .ShouldContain("ix_transactions_stuck_created");
        Plan("SELECT gid FROM transactions WHERE 1 = 1 AND status = $s ORDER BY created_at DESC, gid DESC LIMIT 5", ("$s", "running"))
            .ShouldContain("ix_transactions_status_created");
        Plan("SELECT seq FROM journal WHERE tx = (SELECT id FROM transactions WHERE gid = $g) ORDER BY seq", ("$g", "x")).ShouldContain("ix_journal_tx");
        // The dashboard's counts, polled every 1.5 s: an index scan, never the table with its state_json.
        Plan("SELECT status, count(*) FROM transactions WHERE 1 = 1 GROUP BY status").ShouldContain("COVERING INDEX ix_transactions_status_created");
        Plan("SELECT count(*) FROM transactions WHERE 1 = 1 AND stuck = 1").ShouldContain("ix_transactions_stuck_created");
    }

    [Fact]
    public async Task PurgeFinished_SharesAGroupCommitWithTheHotPathsWrites()
    {
        var old = NewState("old-done") with { Status = TransactionStatus.Committed, UpdatedAt = T0.AddDays(-9) };
        await _store.InsertAsync(old, [Entry("old")], Ct);
        var batchesBefore = _store.CommittedBatches;

        Task<TransactionState?> before, after;
        Task<int> purge;
        using (_store.HoldWriter())
        {
            before = _store.InsertAsync(NewState("queued-before"), [Entry("before")], Ct);
            purge = _store.PurgeFinishedAsync(T0, 100, Ct);
            after = _store.InsertAsync(NewState("queued-after"), [Entry("after")], Ct);
        }

        (await purge).ShouldBe(1);
        (await before).ShouldBeNull();
        (await after).ShouldBeNull();
        // One fsync for all three: the purge took a turn in the batch instead of a batch of its own.
        (_store.CommittedBatches - batchesBefore).ShouldBe(1);
        (await _store.GetAsync("old-done", Ct)).ShouldBeNull();
        (await _store.GetJournalAsync("old-done", Ct)).ShouldBeEmpty();
    }

    [Fact]
    public async Task PurgeFinished_FindsItsBatchThroughTheFinishedIndex_NeverScanningRunningRows()
    {
        await _store.InsertAsync(NewState("plan"), [], Ct);

        var plan = Plan(Schema.FinishedBatch, ("$before", 1L), ("$limit", 10));

        plan.ShouldContain("ix_transactions_finished");
        plan.ShouldNotContain("TEMP B-TREE"); // the index's order is the batch's order: no sort
    }

    [Fact]
    public void Options_OutOfRange_AreRejectedByTheConstructor()
    {
        Should.Throw<ArgumentException>(() => new SqliteTransactionStore(
            new SqliteStoreOptions { Path = _database.Path, MaxBatchSize = 0 },
            Microsoft.Extensions.Logging.Abstractions.NullLogger<SqliteTransactionStore>.Instance));
        Should.Throw<ArgumentException>(() => new SqliteTransactionStore(
            new SqliteStoreOptions { Path = " " },
            Microsoft.Extensions.Logging.Abstractions.NullLogger<SqliteTransactionStore>.Instance));
    }

    [Fact]
    public async Task AddTreatySqliteStore_RegistersOneStoreForTheInterfaceAndTheClass()
    {
        using var other = new TempDatabase();
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddTreatySqliteStore(o => o.Path = other.Path);
        using var host = builder.Build();
        await host.StartAsync(Ct);

        var store = host.Services.GetRequiredService<ITransactionStore>();
        store.ShouldBeSameAs(host.Services.GetRequiredService<SqliteTransactionStore>());
        ((SqliteTransactionStore)store).Path.ShouldBe(Path.GetFullPath(other.Path));
        (await store.InsertAsync(NewState("di"), [], Ct)).ShouldBeNull();

        await host.StopAsync(Ct);
        await ((IAsyncDisposable)host).DisposeAsync();
        File.Exists(other.Path).ShouldBeTrue();
    }

    [Fact]
    public async Task AddTreatySqliteStore_InvalidOptions_FailTheHostAtStart()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddTreatySqliteStore(o => o.MaxBatchSize = -1);
        using var host = builder.Build();

        await Should.ThrowAsync<OptionsValidationException>(() => host.StartAsync(Ct));
    }

    private static TransactionState NewState(string gid) =>
        new SagaMachine().Create(
            new TransactionSpec(gid, Protocol.Saga, "{}", [], null, null), "fp-" + gid, T0) with { Version = 1 };

    private static JournalEntry Entry(string detail) => new(T0, JournalKinds.Submitted, Detail: detail);

    private string Plan(string sql, params (string Name, object Value)[] parameters)
    {
        using var connection = _database.Connect();
        using var command = connection.CreateCommand();
        command.CommandText = "EXPLAIN QUERY PLAN " + sql;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value);
        }

        using var reader = command.ExecuteReader();
        var plan = new List<string>();
        while (reader.Read())
        {
            plan.Add(reader.GetString(3));
        }

        return string.Join(" | ", plan);
    }
}
