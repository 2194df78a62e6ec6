using System.Collections.Immutable;
using System.Text.Json;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Serialization;

namespace Treaty.Testing;
/// <summary>
/// The behaviour every <see cref="ITransactionStore"/> must have. Each store subclasses this once
/// and supplies a fresh, empty database per test. The lease rules are in the base class.
/// </summary>
public abstract class StoreComplianceTests : StoreLeaseComplianceTests
{
    /// <summary>
    /// Disposes the store returned last and returns a new one on the same database, as a restarted
    /// coordinator would open it. The suite calls <see cref="ITransactionStore.InitializeAsync"/>.
    /// </summary>
    protected abstract Task<ITransactionStore> ReopenStoreAsync();

    // ---- insert ----

    [Fact]
    public async Task Initialize_CalledAgain_IsHarmless()
    {
        await Store.InsertAsync(NewState("init"), [], Ct);

        await Store.InitializeAsync(Ct);

        (await Store.GetAsync("init", Ct)).ShouldNotBeNull();
    }

    [Fact]
    public async Task Get_UnknownGid_ReturnsNull()
    {
        (await Store.GetAsync("nobody", Ct)).ShouldBeNull();
        (await Store.GetJournalAsync("nobody", Ct)).ShouldBeEmpty();
    }

    [Fact]
    public async Task Insert_NewGid_ReturnsNullAndStateRoundTripsExactly()
    {
        var state = NewState("new");

        var existing = await Store.InsertAsync(state, [Entry(JournalKinds.Submitted)], Ct);

        existing.ShouldBeNull();
        ShouldBeSameState(await Store.GetAsync("new", Ct), state);
    }

    [Fact]
    public async Task Insert_EveryFieldSet_RoundTripsExactly()
    {
        var state = RichState("rich");

        await Store.InsertAsync(state, [], Ct);

        var stored = await Store.GetAsync("rich", Ct);
        ShouldBeSameState(stored, state);
        stored!.CreatedAt.Offset.ShouldBe(TimeSpan.FromHours(2));
        stored.CreatedAt.ShouldBe(state.CreatedAt);
        stored.Branches[0].Op(ProtocolNames.Action).ResultJson.ShouldBe("""{"paymentId":"p-7","note":"ünïcødé ✓"}""");
    }

    [Fact]
    public async Task Choreography_StateWithItsEventsRoundTrips_AcrossAReopen_AndFiltersByProtocol()
    {
        var machine = new Core.Protocols.ChoreographyMachine(TimeSpan.FromSeconds(5));
        var created = machine.Create(Core.Protocols.ChoreographyMachine.SpecFor("choreo"), Core.Protocols.ChoreographyMachine.Fingerprint, T0);
        var context = new Core.Engine.DecisionContext(T0, new SeededRandomSource(1));
        var v1 = machine.Decide(created, new Submitted(), context).Next with { Version = 1 };
        await Store.InsertAsync(v1, [Entry(JournalKinds.Submitted)], Ct);
        var reported = machine.Decide(v1, new EventReported(new ChoreographyEvent("m1", "order.created", "order", "choreo", T0, """{"amount":25}""", null, 2_000)), context);
        var v2 = reported.Next with { Version = 2 };
        await Store.UpdateAsync(v2, reported.Journal, Ct);

        Store = await ReopenStoreAsync();

        var stored = await Store.GetAsync("choreo", Ct);
        ShouldBeSameState(stored, v2);
        stored!.Choreography.ShouldNotBeNull().MessageIds.ShouldBe(["m1"]);
        stored.Choreography.TimeoutMs.ShouldBe(2_000);
        stored.NextWakeAt.ShouldBe(T0.AddSeconds(2));
        (await Store.ListAsync(new TransactionQuery(Protocol: Protocol.Choreography), Ct)).Items.ShouldHaveSingleItem().Gid.ShouldBe("choreo");
        (await Store.GetJournalAsync("choreo", Ct)).Select(r => r.Entry.Kind).ShouldBe([JournalKinds.Submitted, JournalKinds.Event]);
    }

    [Fact]
    public async Task Insert_ExistingGid_ReturnsStoredStateAndWritesNothing()
    {
        var first = NewState("dup");
        await Store.InsertAsync(first, [Entry(JournalKinds.Submitted)], Ct);
        var second = NewState("dup", createdAt: T0.AddHours(1)) with { Fingerprint = "other", StuckOn = SomeStuckCause };

        var existing = await Store.InsertAsync(second, [Entry(JournalKinds.Aborted), Entry(JournalKinds.Stuck)], Ct);

        ShouldBeSameState(existing, first);
        ShouldBeSameState(await Store.GetAsync("dup", Ct), first);
        (await Store.GetJournalAsync("dup", Ct)).Select(r => r.Entry.Kind).ShouldBe([JournalKinds.Submitted]);
    }

    [Fact]
    public async Task Insert_StoresItsJournalEntriesInOrder()
    {
        JournalEntry[] entries =
        [
            Entry(JournalKinds.Submitted),
            Entry(JournalKinds.AttemptStarted, "pay", ProtocolNames.Action, attempt: 1),
            Entry(JournalKinds.AttemptStarted, "ship", ProtocolNames.Action, attempt: 1),
        ];

        await Store.InsertAsync(NewState("order"), entries, Ct);

        var journal = await Store.GetJournalAsync("order", Ct);
        journal.Select(r => r.Entry).ShouldBe(entries);
        journal.ShouldAllBe(r => r.Gid == "order");
    }

    [Fact]
    public async Task Insert_CanceledToken_ThrowsAndWritesNothing()
    {
        using var canceled = new CancellationTokenSource();
        await canceled.CancelAsync();

        await Should.ThrowAsync<OperationCanceledException>(() => Store.InsertAsync(NewState("canceled"), [], canceled.Token));

        (await Store.GetAsync("canceled", Ct)).ShouldBeNull();
    }

    // ---- update ----

    [Fact]
    public async Task Update_NextVersion_ReplacesStateAndAppendsJournal()
    {
        var v1 = NewState("upd");
        await Store.InsertAsync(v1, [Entry(JournalKinds.Submitted)], Ct);
        var v2 = Advance(v1, s => s with { Status = TransactionStatus.Running, NextWakeAt = null });

        await Store.UpdateAsync(v2, [Entry(JournalKinds.AttemptStarted, "pay", ProtocolNames.Action, attempt: 1)], Ct);

        ShouldBeSameState(await Store.GetAsync("upd", Ct), v2);
        (await Store.GetJournalAsync("upd", Ct)).Select(r => r.Entry.Kind)
            .ShouldBe([JournalKinds.Submitted, JournalKinds.AttemptStarted]);
    }

    [Fact]
    public async Task Update_ManyVersionsInARow_KeepsTheLastAndTheWholeJournal()
    {
        var state = NewState("chain");
        await Store.InsertAsync(state, [Entry(JournalKinds.Submitted)], Ct);
        for (var i = 0; i < 25; i++)
        {
            state = Advance(state);
            await Store.UpdateAsync(state, [Entry(JournalKinds.AttemptUnknown, attempt: i)], Ct);
        }

        var stored = await Store.GetAsync("chain", Ct);
        stored!.Version.ShouldBe(26);
        ShouldBeSameState(stored, state);
        var journal = await Store.GetJournalAsync("chain", Ct);
        journal.Count.ShouldBe(26);
        journal.Skip(1).Select(r => r.Entry.Attempt).ShouldBe(Enumerable.Range(0, 25).Select(i => (int?)i));
        journal.Select(r => r.Sequence).ShouldBeInOrder();
        journal.Select(r => r.Sequence).Distinct().Count().ShouldBe(26);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(3)]
    public async Task Update_WrongVersion_ThrowsConcurrencyConflictAndWritesNothing(long version)
    {
        var v1 = NewState("conflict");
        await Store.InsertAsync(v1, [Entry(JournalKinds.Submitted)], Ct);
        var wrong = v1 with { Version = version, Status = TransactionStatus.Aborted };

        await Should.ThrowAsync<ConcurrencyConflictException>(() => Store.UpdateAsync(wrong, [Entry(JournalKinds.Aborted)], Ct));

        ShouldBeSameState(await Store.GetAsync("conflict", Ct), v1);
        (await Store.GetJournalAsync("conflict", Ct)).Count.ShouldBe(1);
    }

    [Fact]
    public async Task Update_Missing_ThrowsConcurrencyConflictAndWritesNothing()
    {
        var ghost = NewState("ghost") with { Version = 2 };

        await Should.ThrowAsync<ConcurrencyConflictException>(() => Store.UpdateAsync(ghost, [Entry(JournalKinds.Resumed)], Ct));

        (await Store.GetAsync("ghost", Ct)).ShouldBeNull();
        (await Store.GetJournalAsync("ghost", Ct)).ShouldBeEmpty();
    }

    [Fact]
    public async Task Update_ReplayOfAnAppliedVersion_ThrowsConcurrencyConflict()
    {
        var v1 = NewState("replay");
        await Store.InsertAsync(v1, [], Ct);
        var v2 = Advance(v1);
        await Store.UpdateAsync(v2, [Entry(JournalKinds.Submitted)], Ct);

        await Should.ThrowAsync<ConcurrencyConflictException>(() => Store.UpdateAsync(v2, [Entry(JournalKinds.Submitted)], Ct));

        (await Store.GetJournalAsync("replay", Ct)).Count.ShouldBe(1);
    }

    [Fact]
    public async Task Writes_ToOneGid_NeverTouchAnother()
    {
        var a = NewState("iso-a");
        var b = NewState("iso-b");
        await Store.InsertAsync(a, [Entry(JournalKinds.Submitted, detail: "a")], Ct);
        await Store.InsertAsync(b, [Entry(JournalKinds.Submitted, detail: "b")], Ct);

        await Store.UpdateAsync(Advance(a, s => s with { Status = TransactionStatus.Committed }), [Entry(JournalKinds.Committed, detail: "a")], Ct);
        await Should.ThrowAsync<ConcurrencyConflictException>(() => Store.UpdateAsync(b with { Version = 5 }, [Entry(JournalKinds.Aborted, detail: "b")], Ct));

        ShouldBeSameState(await Store.GetAsync("iso-b", Ct), b);
        (await Store.GetJournalAsync("iso-a", Ct)).ShouldAllBe(r => r.Gid == "iso-a" && r.Entry.Detail == "a");
        (await Store.GetJournalAsync("iso-b", Ct)).Select(r => r.Entry.Detail).ShouldBe(["b"]);
    }

    [Fact]
    public async Task Journal_EveryFieldRoundTrips()
    {
        var full = new JournalEntry(T0.AddTicks(1234567), JournalKinds.AttemptFailed, "pay", ProtocolNames.Compensate, 7, 503, "upstream said \"no\" ✓",
            DurationMs: 1234, Body: "{\"detail\":\"no ✓\"}");
        var bare = new JournalEntry(T0.AddMinutes(1), JournalKinds.OperatorAbort);

        await Store.InsertAsync(NewState("journal"), [full, bare], Ct);

        var journal = await Store.GetJournalAsync("journal", Ct);
        journal.Select(r => r.Entry).ShouldBe([full, bare]);
        journal[0].Entry.At.UtcTicks.ShouldBe(full.At.UtcTicks);
    }

    // ---- listing ----

    [Fact]
    public async Task List_Empty_ReturnsAnEmptyPageWithoutCursor()
    {
        var page = await Store.ListAsync(new TransactionQuery(), Ct);

        page.Items.ShouldBeEmpty();
        page.NextCursor.ShouldBeNull();
    }

    [Fact]
    public async Task List_NoFilter_ReturnsNewestFirstThenGidDescending()
    {
        var states = await InsertAllAsync(Mixed(12));

        var page = await Store.ListAsync(new TransactionQuery(Limit: 100), Ct);

        page.Items.Select(s => s.Gid).ShouldBe(Expected(states, _ => true));
        page.NextCursor.ShouldBeNull();
    }

    [Fact]
    public async Task List_PagedWithCursors_CoversEveryItemExactlyOnceInOrder()
    {
        var states = await InsertAllAsync(Mixed(23));

        var pages = await ListPagesAsync(new TransactionQuery(Limit: 4));

        pages.Count.ShouldBe(6);
        pages.Take(5).ShouldAllBe(p => p.Items.Count == 4 && p.NextCursor != null);
        pages[^1].Items.Count.ShouldBe(3);
        pages[^1].NextCursor.ShouldBeNull();
        pages.SelectMany(p => p.Items).Select(s => s.Gid).ShouldBe(Expected(states, _ => true));
    }

    [Fact]
    public async Task List_ExactlyFullLastPage_HasNoCursor()
    {
        await InsertAllAsync(Mixed(10));

        var pages = await ListPagesAsync(new TransactionQuery(Limit: 5));

        pages.Count.ShouldBe(2);
        pages[1].Items.Count.ShouldBe(5);
        pages[1].NextCursor.ShouldBeNull();
    }

    [Fact]
    public async Task List_CursorStaysValidWhenNewerTransactionsArrive()
    {
        var states = await InsertAllAsync(Mixed(9));
        var first = await Store.ListAsync(new TransactionQuery(Limit: 3), Ct);

        await Store.InsertAsync(NewState("z-newest", createdAt: T0.AddDays(1)), [], Ct);
        var rest = await ListPagesAsync(new TransactionQuery(Limit: 3, Cursor: first.NextCursor));

        first.Items.Concat(rest.SelectMany(p => p.Items)).Select(s => s.Gid).ShouldBe(Expected(states, _ => true));
    }

    [Fact]
    public async Task List_FilterByStatus_ReturnsOnlyThatStatus()
    {
        var states = await InsertAllAsync(Mixed(30));

        var items = await ListAllAsync(new TransactionQuery(Status: TransactionStatus.Running, Limit: 2));

        items.Select(s => s.Gid).ShouldBe(Expected(states, s => s.Status == TransactionStatus.Running));
        items.ShouldNotBeEmpty();
    }

    [Fact]
    public async Task List_FilterByProtocol_ReturnsOnlyThatProtocol()
    {
        var states = await InsertAllAsync(Mixed(30));

        var items = await ListAllAsync(new TransactionQuery(Protocol: Protocol.Tcc, Limit: 3));

        items.Select(s => s.Gid).ShouldBe(Expected(states, s => s.Spec.Protocol == Protocol.Tcc));
        items.ShouldNotBeEmpty();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task List_FilterByStuck_ReturnsOnlyMatching(bool stuck)
    {
        var states = await InsertAllAsync(Mixed(30));

        var items = await ListAllAsync(new TransactionQuery(Stuck: stuck, Limit: 4));

        items.Select(s => s.Gid).ShouldBe(Expected(states, s => s.Stuck == stuck));
        items.ShouldNotBeEmpty();
    }

    [Fact]
    public async Task List_Since_IncludesCreatedAtTheInstantAndIsTickExact()
    {
        var states = await InsertAllAsync(Mixed(20));
        var pivot = states[7].CreatedAt;

        var atPivot = await ListAllAsync(new TransactionQuery(Since: pivot, Limit: 5));
        var justAfter = await ListAllAsync(new TransactionQuery(Since: pivot.AddTicks(1), Limit: 5));

        atPivot.Select(s => s.Gid).ShouldBe(Expected(states, s => s.CreatedAt >= pivot));
        justAfter.Select(s => s.Gid).ShouldBe(Expected(states, s => s.CreatedAt > pivot));
        atPivot.Count.ShouldBeGreaterThan(justAfter.Count);
    }

    [Fact]
    public async Task List_Since_ComparesInstantsNotLocalTimes()
    {
        var states = await InsertAllAsync(Mixed(20));
        var pivot = states[5].CreatedAt.ToOffset(TimeSpan.FromHours(-7));

        var items = await ListAllAsync(new TransactionQuery(Since: pivot, Limit: 50));

        items.Select(s => s.Gid).ShouldBe(Expected(states, s => s.CreatedAt >= pivot));
    }

    [Fact]
    public async Task List_CombinedFilters_PageThroughTheIntersection()
    {
        var states = await InsertAllAsync(Mixed(60));
        var since = T0.AddMinutes(10);

        var items = await ListAllAsync(new TransactionQuery(TransactionStatus.Aborting, Protocol.Saga, true, since, Limit: 1));

        items.Select(s => s.Gid).ShouldBe(Expected(states, s =>
            s.Status == TransactionStatus.Aborting && s.Spec.Protocol == Protocol.Saga && s.Stuck && s.CreatedAt >= since));
        items.ShouldNotBeEmpty();
    }

    [Fact]
    public async Task List_Until_ExcludesCreatedAtTheInstant()
    {
        var states = await InsertAllAsync(Mixed(20));
        var pivot = states[7].CreatedAt;

        var beforePivot = await ListAllAsync(new TransactionQuery(Until: pivot, Limit: 5));
        var justAfter = await ListAllAsync(new TransactionQuery(Until: pivot.AddTicks(1), Limit: 5));

        beforePivot.Select(s => s.Gid).ShouldBe(Expected(states, s => s.CreatedAt < pivot));
        justAfter.Select(s => s.Gid).ShouldBe(Expected(states, s => s.CreatedAt <= pivot));
        justAfter.Count.ShouldBeGreaterThan(beforePivot.Count);
    }

    [Fact]
    public async Task List_SinceAndUntil_ReturnTheHalfOpenRange()
    {
        var states = await InsertAllAsync(Mixed(30));
        var since = T0.AddMinutes(2);
        var until = T0.AddMinutes(5);

        var items = await ListAllAsync(new TransactionQuery(Since: since, Until: until, Limit: 2));

        items.Select(s => s.Gid).ShouldBe(Expected(states, s => s.CreatedAt >= since && s.CreatedAt < until));
        items.Count.ShouldBe(9);
    }

    [Fact]
    public async Task List_GidContains_MatchesSubstringsOrdinally()
    {
        await InsertAllAsync([NewState("order-17-pay"), NewState("order-170"), NewState("ORDER-17x"), NewState("refund-9"), NewState("a%b_c")]);

        (await ListAllAsync(new TransactionQuery(GidContains: "order-17", Limit: 1))).Select(s => s.Gid).Order(StringComparer.Ordinal)
            .ShouldBe(["order-17-pay", "order-170"]);
        (await ListAllAsync(new TransactionQuery(GidContains: "9", Limit: 10))).Select(s => s.Gid).ShouldBe(["refund-9"]);
        // Wildcards of LIKE are plain characters here.
        (await ListAllAsync(new TransactionQuery(GidContains: "%", Limit: 10))).Select(s => s.Gid).ShouldBe(["a%b_c"]);
        (await ListAllAsync(new TransactionQuery(GidContains: "_", Limit: 10))).Select(s => s.Gid).ShouldBe(["a%b_c"]);
        (await ListAllAsync(new TransactionQuery(GidContains: "nothing", Limit: 10))).ShouldBeEmpty();
    }

    [Fact]
    public async Task Count_Empty_IsZeroForEveryStatus()
    {
        var counts = await Store.CountAsync(new TransactionQuery(), Ct);

        counts.ByStatus.Keys.ShouldBe(Enum.GetValues<TransactionStatus>(), ignoreOrder: true);
        counts.ByStatus.Values.ShouldAllBe(n => n == 0);
        counts.Stuck.ShouldBe(0);
        counts.Total.ShouldBe(0);
    }

    [Fact]
    public async Task Count_ByStatus_MatchesTheListingUnderTheSameFilters()
    {
        var states = await InsertAllAsync(Mixed(60));
        var filters = new TransactionQuery(Protocol: Protocol.Saga, Since: T0.AddMinutes(3), Until: T0.AddMinutes(15), GidContains: "m0");

        var counts = await Store.CountAsync(filters with { Status = TransactionStatus.Committed }, Ct);

        var matching = states.Where(s => s.Spec.Protocol == Protocol.Saga && s.CreatedAt >= T0.AddMinutes(3) && s.CreatedAt < T0.AddMinutes(15) && s.Gid.Contains("m0", StringComparison.Ordinal)).ToList();
        foreach (var status in Enum.GetValues<TransactionStatus>())
        {
            counts.ByStatus[status].ShouldBe(matching.Count(s => s.Status == status), $"status {status}");
            counts.ByStatus[status].ShouldBe((await ListAllAsync(filters with { Status = status, Limit = 7 })).Count);
        }

        counts.Stuck.ShouldBe(matching.Count(s => s.Stuck));
        counts.Total.ShouldBe(matching.Count);
        counts.Total.ShouldBeGreaterThan(5);
    }

    [Fact]
    public async Task Count_FollowsUpdates()
    {
        var state = NewState("counted");
        await Store.InsertAsync(state, [], Ct);
        (await Store.CountAsync(new TransactionQuery(), Ct)).ByStatus[TransactionStatus.Pending].ShouldBe(1);

        await Store.UpdateAsync(Advance(state, s => s with { Status = TransactionStatus.Aborting, StuckOn = SomeStuckCause }), [], Ct);

        var counts = await Store.CountAsync(new TransactionQuery(), Ct);
        counts.ByStatus[TransactionStatus.Pending].ShouldBe(0);
        counts.ByStatus[TransactionStatus.Aborting].ShouldBe(1);
        counts.Stuck.ShouldBe(1);
    }

    [Fact]
    public async Task List_ReflectsUpdatedStatus()
    {
        var state = NewState("moves");
        await Store.InsertAsync(state, [], Ct);
        await Store.UpdateAsync(Advance(state, s => s with { Status = TransactionStatus.Committed, NextWakeAt = null }), [], Ct);

        (await Store.ListAsync(new TransactionQuery(Status: TransactionStatus.Pending), Ct)).Items.ShouldBeEmpty();
        (await Store.ListAsync(new TransactionQuery(Status: TransactionStatus.Committed), Ct)).Items.Select(s => s.Version).ShouldBe([2L]);
    }

    [Theory]
    [InlineData(0, 1)]
    [InlineData(-5, 1)]
    [InlineData(501, 500)]
    [InlineData(int.MaxValue, 500)]
    public async Task List_Limit_IsClampedBetween1And500(int limit, int expected)
    {
        await InsertAllAsync(Enumerable.Range(0, 501).Select(i => NewState($"c{i:D4}", createdAt: T0.AddSeconds(i))).ToList());

        var page = await Store.ListAsync(new TransactionQuery(Limit: limit), Ct);

        page.Items.Count.ShouldBe(expected);
        page.NextCursor.ShouldNotBeNull();
    }

    [Theory]
    [InlineData("not a cursor!")]
    [InlineData("bm9wZQ")]
    public async Task List_MalformedCursor_ThrowsArgumentException(string cursor)
    {
        await Should.ThrowAsync<ArgumentException>(() => Store.ListAsync(new TransactionQuery(Cursor: cursor), Ct));
    }

    // ---- due work ----

    [Fact]
    public async Task ListDue_ReturnsNonTerminalDueOrUnset_ExcludesTerminalAndFuture()
    {
        await InsertAllAsync(DueFixture());

        var due = await Store.ListDueAsync(T0, 100, Ct);

        due.ShouldBe(["null-wake", "prepared-past", "past", "exactly-now"], ignoreOrder: true);
    }

    [Fact]
    public async Task ListDue_OrdersUnsetWakeFirstThenEarliest()
    {
        await InsertAllAsync(DueFixture());

        var due = await Store.ListDueAsync(T0, 100, Ct);

        due.ShouldBe(["null-wake", "prepared-past", "past", "exactly-now"]);
    }

    [Fact]
    public async Task ListDue_Limit_TakesTheEarliest()
    {
        await InsertAllAsync(DueFixture());

        (await Store.ListDueAsync(T0, 2, Ct)).ShouldBe(["null-wake", "prepared-past"]);
        (await Store.ListDueAsync(T0.AddHours(1), 5, Ct)).ShouldBe(["null-wake", "prepared-past", "past", "exactly-now", "future"]);
    }

    [Fact]
    public async Task ListDue_FollowsUpdates()
    {
        var states = await InsertAllAsync(DueFixture());
        var past = states.Single(s => s.Gid == "past");
        var future = states.Single(s => s.Gid == "future");

        await Store.UpdateAsync(Advance(past, s => s with { Status = TransactionStatus.Committed, NextWakeAt = null }), [], Ct);
        await Store.UpdateAsync(Advance(future, s => s with { NextWakeAt = T0.AddSeconds(-30) }), [], Ct);

        (await Store.ListDueAsync(T0, 100, Ct)).ShouldBe(["null-wake", "future", "prepared-past", "exactly-now"]);
    }

    // ---- retention ----

    /// <summary>The cutoff of the retention tests: a day before <see cref="T0"/>.</summary>
    private static readonly DateTimeOffset Cutoff = T0.AddDays(-1);

    private static TransactionState Finished(string gid, TransactionStatus status, DateTimeOffset finishedAt) =>
        NewState(gid, createdAt: finishedAt.AddMinutes(-1)) with { Status = status, UpdatedAt = finishedAt, NextWakeAt = null };

    [Fact]
    public async Task PurgeFinished_DeletesOnlyFinishedBeforeTheCutoff_NeverUnfinishedHoweverOld()
    {
        var old = T0.AddDays(-30);
        var states = Enum.GetValues<TransactionStatus>()
            .Select(status => Finished("old-" + status.ToWire(), status, old))
            .Concat(
            [
                Finished("new-committed", TransactionStatus.Committed, T0),
                Finished("new-aborted", TransactionStatus.Aborted, T0),
                Finished("at-cutoff", TransactionStatus.Committed, Cutoff),
                Finished("tick-before-cutoff", TransactionStatus.Aborted, Cutoff.AddTicks(-1)),
                // Stuck waiting for an operator for a month: still unfinished, so it stays.
                Finished("old-stuck", TransactionStatus.Aborting, old) with { StuckOn = SomeStuckCause },
            ])
            .ToList();
        await InsertAllAsync(states);

        var deleted = await Store.PurgeFinishedAsync(Cutoff, 100, Ct);

        deleted.ShouldBe(3);
        foreach (var gid in new[] { "old-committed", "old-aborted", "tick-before-cutoff" })
        {
            (await Store.GetAsync(gid, Ct)).ShouldBeNull(gid);
        }

        var kept = states.Select(s => s.Gid).Except(["old-committed", "old-aborted", "tick-before-cutoff"]).ToList();
        foreach (var gid in kept)
        {
            (await Store.GetAsync(gid, Ct)).ShouldNotBeNull(gid);
        }

        (await Store.CountAsync(new TransactionQuery(), Ct)).Total.ShouldBe(kept.Count);
        (await Store.ListAsync(new TransactionQuery(Limit: 500), Ct)).Items.Select(s => s.Gid).ShouldBe(kept, ignoreOrder: true);
    }

    [Fact]
    public async Task PurgeFinished_DeletesTheJournalWithTheTransaction_AndNoOtherJournal()
    {
        var old = T0.AddDays(-10);
        await Store.InsertAsync(Finished("gone", TransactionStatus.Committed, old), [Entry(JournalKinds.Submitted), Entry(JournalKinds.Resumed)], Ct);
        await Store.InsertAsync(Finished("running", TransactionStatus.Running, old), [Entry(JournalKinds.Submitted)], Ct);
        await Store.InsertAsync(Finished("recent", TransactionStatus.Committed, T0), [Entry(JournalKinds.Submitted)], Ct);

        (await Store.PurgeFinishedAsync(Cutoff, 100, Ct)).ShouldBe(1);

        (await Store.GetJournalAsync("gone", Ct)).ShouldBeEmpty();
        (await Store.GetJournalAsync("running", Ct)).Count.ShouldBe(1);
        (await Store.GetJournalAsync("recent", Ct)).Count.ShouldBe(1);
    }

    [Fact]
    public async Task PurgeFinished_TakesAtMostTheBatch_OldestFirst_UntilNoneIsLeft()
    {
        // Inserted newest first, so the order cannot come from insertion.
        var states = Enumerable.Range(0, 5).Reverse()
            .Select(i => Finished($"f{i}", i % 2 == 0 ? TransactionStatus.Committed : TransactionStatus.Aborted, T0.AddDays(-10).AddMinutes(i)))
            .ToList();
        foreach (var state in states)
        {
            await Store.InsertAsync(state, [], Ct);
        }

        (await Store.PurgeFinishedAsync(Cutoff, 2, Ct)).ShouldBe(2);
        (await Store.GetAsync("f0", Ct)).ShouldBeNull();
        (await Store.GetAsync("f1", Ct)).ShouldBeNull();
        (await Store.GetAsync("f2", Ct)).ShouldNotBeNull();

        (await Store.PurgeFinishedAsync(Cutoff, 2, Ct)).ShouldBe(2);
        (await Store.PurgeFinishedAsync(Cutoff, 2, Ct)).ShouldBe(1);
        (await Store.PurgeFinishedAsync(Cutoff, 2, Ct)).ShouldBe(0);
        (await Store.CountAsync(new TransactionQuery(), Ct)).Total.ShouldBe(0);
    }

    [Fact]
    public async Task PurgeFinished_PurgedGid_IsUnknownAndMayBeInsertedAgainWithAFreshJournal()
    {
        await Store.InsertAsync(Finished("again", TransactionStatus.Committed, T0.AddDays(-3)), [Entry(JournalKinds.Submitted), Entry(JournalKinds.Resumed)], Ct);
        (await Store.PurgeFinishedAsync(Cutoff, 10, Ct)).ShouldBe(1);
        (await Store.GetAsync("again", Ct)).ShouldBeNull();

        var second = NewState("again", createdAt: T0);
        (await Store.InsertAsync(second, [Entry(JournalKinds.Submitted)], Ct)).ShouldBeNull();

        ShouldBeSameState(await Store.GetAsync("again", Ct), second);
        (await Store.GetJournalAsync("again", Ct)).Select(r => r.Entry.Kind).ShouldBe([JournalKinds.Submitted]);
    }

    [Fact]
    public async Task PurgeFinished_FollowsUpdates_ATransactionFinishedByAnUpdateGoesWhenOldEnough()
    {
        var running = NewState("late", createdAt: T0.AddDays(-20)) with { Status = TransactionStatus.Running };
        await Store.InsertAsync(running, [], Ct);
        (await Store.PurgeFinishedAsync(T0, 10, Ct)).ShouldBe(0);

        var committed = Advance(running, s => s with { Status = TransactionStatus.Committed, NextWakeAt = null });
        await Store.UpdateAsync(committed, [], Ct);

        (await Store.PurgeFinishedAsync(committed.UpdatedAt, 10, Ct)).ShouldBe(0);
        (await Store.PurgeFinishedAsync(committed.UpdatedAt.AddTicks(1), 10, Ct)).ShouldBe(1);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    public async Task PurgeFinished_BatchNotPositive_Throws(int batchSize)
    {
        await Should.ThrowAsync<ArgumentOutOfRangeException>(() => Store.PurgeFinishedAsync(T0, batchSize, Ct));
    }

    // ---- concurrency ----

    [Fact]
    public async Task Insert_200InParallel_AllSucceedAndAreReadable()
    {
        var states = Enumerable.Range(0, 200).Select(i => NewState($"par{i:D3}", createdAt: T0.AddMilliseconds(i))).ToList();

        var results = await Task.WhenAll(states.Select(s => Task.Run(() => Store.InsertAsync(s, [Entry(JournalKinds.Submitted, detail: s.Gid)], Ct))));

        results.ShouldAllBe(r => r == null);
        foreach (var state in states)
        {
            ShouldBeSameState(await Store.GetAsync(state.Gid, Ct), state);
            (await Store.GetJournalAsync(state.Gid, Ct)).Single().Entry.Detail.ShouldBe(state.Gid);
        }

        (await ListAllAsync(new TransactionQuery(Limit: 500))).Count.ShouldBe(200);
    }

    [Fact]
    public async Task Update_200InParallel_AllSucceedAndAreReadable()
    {
        var states = await InsertAllAsync(Enumerable.Range(0, 200).Select(i => NewState($"pu{i:D3}")).ToList());
        var next = states.Select(s => Advance(s, x => x with { Status = TransactionStatus.Running, Reason = "r-" + x.Gid })).ToList();

        await Task.WhenAll(next.Select(s => Task.Run(() => Store.UpdateAsync(s, [Entry(JournalKinds.AttemptStarted, detail: s.Gid)], Ct))));

        foreach (var state in next)
        {
            ShouldBeSameState(await Store.GetAsync(state.Gid, Ct), state);
            (await Store.GetJournalAsync(state.Gid, Ct)).Single().Entry.Detail.ShouldBe(state.Gid);
        }
    }

    [Fact]
    public async Task Update_ChainsOnManyGidsInParallel_EachEndsAtItsLastVersionWithItsWholeJournal()
    {
        var states = await InsertAllAsync(Enumerable.Range(0, 40).Select(i => NewState($"ch{i:D2}")).ToList());

        var finals = await Task.WhenAll(states.Select(s => Task.Run(async () =>
        {
            var current = s;
            for (var step = 0; step < 10; step++)
            {
                current = Advance(current);
                await Store.UpdateAsync(current, [Entry(JournalKinds.AttemptUnknown, attempt: step)], Ct);
            }

            return current;
        })));

        foreach (var final in finals)
        {
            ShouldBeSameState(await Store.GetAsync(final.Gid, Ct), final);
            (await Store.GetJournalAsync(final.Gid, Ct)).Select(r => r.Entry.Attempt).ShouldBe(Enumerable.Range(0, 10).Select(i => (int?)i));
        }
    }

    [Fact]
    public async Task Update_RacingWritersOnOneVersion_ExactlyOneWins()
    {
        var v1 = NewState("race");
        await Store.InsertAsync(v1, [], Ct);
        var contenders = Enumerable.Range(0, 20).Select(i => Advance(v1, s => s with { Reason = $"writer {i}" })).ToList();

        var outcomes = await Task.WhenAll(contenders.Select(c => Task.Run(async () =>
        {
            try
            {
                await Store.UpdateAsync(c, [Entry(JournalKinds.OperatorRetry, detail: c.Reason)], Ct);
                return c;
            }
            catch (ConcurrencyConflictException)
            {
                return null;
            }
        })));

        var winner = outcomes.Where(o => o != null).ShouldHaveSingleItem();
        ShouldBeSameState(await Store.GetAsync("race", Ct), winner);
        (await Store.GetJournalAsync("race", Ct)).Select(r => r.Entry.Detail).ShouldBe([winner!.Reason]);
    }

    [Fact]
    public async Task Insert_RacingOnOneGid_ExactlyOneInsertsAndTheOthersSeeIt()
    {
        var contenders = Enumerable.Range(0, 20).Select(i => NewState("same") with { Fingerprint = $"fp-{i}" }).ToList();

        var results = await Task.WhenAll(contenders.Select(c => Task.Run(() => Store.InsertAsync(c, [Entry(JournalKinds.Submitted, detail: c.Fingerprint)], Ct))));

        results.Count(r => r is null).ShouldBe(1);
        var winner = contenders[Array.FindIndex(results, r => r is null)];
        results.Where(r => r is not null).ShouldAllBe(r => r!.Fingerprint == winner.Fingerprint);
        ShouldBeSameState(await Store.GetAsync("same", Ct), winner);
        (await Store.GetJournalAsync("same", Ct)).Select(r => r.Entry.Detail).ShouldBe([winner.Fingerprint]);
    }

    // ---- durability ----

    [Fact]
    public async Task Reopen_KeepsEveryAcknowledgedWrite()
    {
        var a = RichState("durable-a");
        var b = NewState("durable-b", createdAt: T0.AddMinutes(1));
        await Store.InsertAsync(a, [Entry(JournalKinds.Submitted)], Ct);
        await Store.InsertAsync(b, [Entry(JournalKinds.Submitted)], Ct);
        var a2 = Advance(a, s => s with { Status = TransactionStatus.Aborted, NextWakeAt = null, StuckOn = null });
        await Store.UpdateAsync(a2, [Entry(JournalKinds.Aborted, detail: "done")], Ct);
        var journalBefore = await Store.GetJournalAsync("durable-a", Ct);

        Store = await ReopenStoreAsync();
        await Store.InitializeAsync(Ct);

        ShouldBeSameState(await Store.GetAsync("durable-a", Ct), a2);
        ShouldBeSameState(await Store.GetAsync("durable-b", Ct), b);
        (await Store.GetJournalAsync("durable-a", Ct)).ShouldBe(journalBefore);
        (await Store.ListDueAsync(T0.AddDays(1), 10, Ct)).ShouldBe(["durable-b"]);
        (await Store.ListAsync(new TransactionQuery(), Ct)).Items.Select(s => s.Gid).ShouldBe(["durable-b", "durable-a"]);
    }

    [Fact]
    public async Task Reopen_ContinuesVersionsAndJournalSequences()
    {
        var v1 = NewState("continue");
        await Store.InsertAsync(v1, [Entry(JournalKinds.Submitted)], Ct);

        Store = await ReopenStoreAsync();
        await Store.InitializeAsync(Ct);
        var v2 = Advance(v1);
        await Store.UpdateAsync(v2, [Entry(JournalKinds.Resumed)], Ct);

        await Should.ThrowAsync<ConcurrencyConflictException>(() => Store.UpdateAsync(v2, [], Ct));
        var journal = await Store.GetJournalAsync("continue", Ct);
        journal.Select(r => r.Entry.Kind).ShouldBe([JournalKinds.Submitted, JournalKinds.Resumed]);
        journal[1].Sequence.ShouldBeGreaterThan(journal[0].Sequence);
    }

}
