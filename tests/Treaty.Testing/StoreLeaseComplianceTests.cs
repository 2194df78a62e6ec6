using System.Collections.Immutable;
using System.Text.Json;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Serialization;

namespace Treaty.Testing;

/// <summary>
/// The lease rules every <see cref="ITransactionStore"/> follows (owner and epoch fencing, claims,
/// renewals, releases, finish notices), and the lifecycle and helpers of the whole compliance suite.
/// <see cref="StoreComplianceTests"/> adds the rest; an in-memory store that only models leases
/// (the engine tests' fake) subclasses this alone.
/// </summary>
public abstract class StoreLeaseComplianceTests : IAsyncLifetime
{
    /// <summary>A fixed clock reading; stores must never consult the real clock for stored times.</summary>
    protected static readonly DateTimeOffset T0 = new(2026, 3, 1, 12, 0, 0, TimeSpan.Zero);

    private static readonly SagaMachine Machine = new();
    private readonly CancellationTokenSource _timeout = new(TimeSpan.FromMinutes(2));

    /// <summary>The store under test, initialized.</summary>
    protected ITransactionStore Store { get; set; } = null!;

    /// <summary>Bounds every call so a hung store fails the test instead of the run.</summary>
    protected CancellationToken Ct => _timeout.Token;

    /// <summary>A store on a new, empty database. The suite calls <see cref="ITransactionStore.InitializeAsync"/>.</summary>
    protected abstract Task<ITransactionStore> CreateStoreAsync();

    /// <summary>
    /// Another store instance on the same database, as a second coordinator process would open it
    /// (the suite calls <see cref="ITransactionStore.InitializeAsync"/>; the subclass disposes it).
    /// An in-process store whose instances cannot share data returns <see cref="Store"/> itself.
    /// </summary>
    protected virtual Task<ITransactionStore> OpenAnotherInstanceAsync() => Task.FromResult(Store);

    public virtual async Task InitializeAsync()
    {
        Store = await CreateStoreAsync();
        await Store.InitializeAsync(Ct);
    }

    public virtual async Task DisposeAsync()
    {
        if (Store is IAsyncDisposable disposable)
        {
            await disposable.DisposeAsync();
        }

        _timeout.Dispose();
    }

    // ---- leases ----
    // Real, short leases and real waits: a lease expires by the store's clock (the database's for
    // a server database), so the suite never moves a coordinator clock to expire one.

    private static readonly LeaseRequest A = new("owner-a", TimeSpan.FromMinutes(1));
    private static readonly LeaseRequest B = new("owner-b", TimeSpan.FromMinutes(1));

    [Fact]
    public async Task Lease_InsertWithLease_AnotherOwnerIsRefusedUntilItExpires_ThenClaimsAtTheNextEpoch()
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var shortLease = new LeaseRequest("owner-a", TimeSpan.FromSeconds(1));
        await Store.InsertAsync(NewState("l-expire"), [Entry(JournalKinds.Submitted)], shortLease, Ct);

        (await Store.ClaimAsync("l-expire", B, takeOver: false, Ct)).ShouldBeNull();
        (await Store.ClaimDueAsync(B, T0.AddDays(1), 10, Ct)).ShouldBeEmpty();

        var claim = await ClaimWhenFreeAsync("l-expire", B);
        clock.Elapsed.ShouldBeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(950), "claimed before the lease expired");
        claim.Epoch.ShouldBe(2);
    }

    [Fact]
    public async Task Lease_ClaimDueAfterExpiry_RaisesTheEpoch()
    {
        var shortLease = new LeaseRequest("owner-a", TimeSpan.FromMilliseconds(300));
        await Store.InsertAsync(NewState("l-due") with { NextWakeAt = T0 }, [], shortLease, Ct);
        (await Store.ClaimDueAsync(B, T0, 10, Ct)).ShouldBeEmpty();

        IReadOnlyList<LeaseClaim> claims = [];
        var deadline = DateTimeOffset.UtcNow.AddSeconds(20);
        while (claims.Count == 0 && DateTimeOffset.UtcNow < deadline)
        {
            await Task.Delay(50, Ct);
            claims = await Store.ClaimDueAsync(B, T0, 10, Ct);
        }

        claims.ShouldHaveSingleItem().ShouldBe(new LeaseClaim("l-due", 2));
    }

    [Fact]
    public async Task Lease_FencedWriteByTheOldOwnerAfterANewClaim_IsLeaseLostAndWritesNothing()
    {
        var v1 = NewState("l-fenced");
        await Store.InsertAsync(v1, [Entry(JournalKinds.Submitted)], A, Ct);
        var taken = (await Store.ClaimAsync("l-fenced", B, takeOver: true, Ct)).ShouldNotBeNull();
        taken.Epoch.ShouldBe(2);
        var v2 = Advance(v1, s => s with { Reason = "stale owner" });

        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(v2, [Entry(JournalKinds.Resumed)], new Fence("owner-a", 1), Ct));
        // The right owner at the wrong epoch is refused as well.
        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(v2, [Entry(JournalKinds.Resumed)], new Fence("owner-b", 1), Ct));

        ShouldBeSameState(await Store.GetAsync("l-fenced", Ct), v1);
        (await Store.GetJournalAsync("l-fenced", Ct)).Select(r => r.Entry.Kind).ShouldBe([JournalKinds.Submitted]);
        await Store.UpdateAsync(v2, [Entry(JournalKinds.Resumed)], B.FenceOf(taken), Ct);
        ShouldBeSameState(await Store.GetAsync("l-fenced", Ct), v2);
    }

    [Fact]
    public async Task Lease_OldOwnersWriteAfterTheNewOwnerWrote_IsLeaseLost_NotAPlainConflict()
    {
        var v1 = NewState("l-moved-on");
        await Store.InsertAsync(v1, [Entry(JournalKinds.Submitted)], A, Ct);
        var taken = (await Store.ClaimAsync("l-moved-on", B, takeOver: true, Ct)).ShouldNotBeNull();
        var v2 = Advance(v1, s => s with { Reason = "new owner" });
        await Store.UpdateAsync(v2, [Entry(JournalKinds.Resumed)], B.FenceOf(taken), Ct);

        // The stale owner's write is behind on both counts; the fence is what it must hear about.
        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(v2, [], new Fence("owner-a", 1), Ct));
        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(Advance(v2), [], new Fence("owner-a", 1), Ct));
        // The holder itself behind on the version: a plain conflict, not a lost lease.
        var conflict = await Should.ThrowAsync<ConcurrencyConflictException>(() => Store.UpdateAsync(v2, [], B.FenceOf(taken), Ct));
        conflict.ShouldNotBeOfType<LeaseLostException>();
        ShouldBeSameState(await Store.GetAsync("l-moved-on", Ct), v2);
    }

    [Fact]
    public async Task ListHolders_CountsEachOwnersUnfinishedTransactions_AndSaysWhoseLeasesRanOut()
    {
        (await Store.ListHoldersAsync(Ct)).ShouldBeEmpty();
        await Store.InsertAsync(NewState("h-a1"), [], A, Ct);
        await Store.InsertAsync(NewState("h-a2"), [], A, Ct);
        var finished = NewState("h-a3");
        await Store.InsertAsync(finished, [], A, Ct);
        await Store.UpdateAsync(Advance(finished, s => s with { Status = TransactionStatus.Committed, NextWakeAt = null }), [], new Fence("owner-a", 1), Ct);
        await Store.InsertAsync(NewState("h-b"), [], B, Ct);
        await Store.InsertAsync(NewState("h-free"), [], Ct);
        var before = DateTimeOffset.UtcNow;
        await Store.InsertAsync(NewState("h-c"), [], new LeaseRequest("owner-c", TimeSpan.FromMilliseconds(200)), Ct);
        await Task.Delay(500, Ct);

        var holders = await Store.ListHoldersAsync(Ct);

        // The finished one gave its lease up; the unleased one has no holder.
        holders.Select(h => (h.Owner, h.Held, h.Expired)).ShouldBe([("owner-a", 2L, false), ("owner-b", 1L, false), ("owner-c", 1L, true)]);
        holders[0].LeaseUntil.ShouldBeGreaterThan(before + TimeSpan.FromSeconds(50), "owner-a's minute-long leases");
        holders[2].LeaseUntil.ShouldBeLessThan(before + TimeSpan.FromSeconds(30));
        // A take-over moves the count to the new holder, at once.
        (await Store.ClaimAsync("h-c", B, takeOver: false, Ct)).ShouldNotBeNull();
        (await Store.ListHoldersAsync(Ct)).Select(h => (h.Owner, h.Held, h.Expired)).ShouldBe([("owner-a", 2L, false), ("owner-b", 2L, false)]);
    }

    [Fact]
    public async Task Lease_UnfencedWriteOnAnOwnedRow_IsRefused_AndAFencedWriteOnAnUnownedRowToo()
    {
        var owned = NewState("l-owned");
        await Store.InsertAsync(owned, [], A, Ct);
        var free = NewState("l-free");
        await Store.InsertAsync(free, [], Ct);

        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(Advance(owned), [Entry(JournalKinds.Resumed)], Ct));
        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(Advance(free), [Entry(JournalKinds.Resumed)], new Fence("owner-a", 0), Ct));

        ShouldBeSameState(await Store.GetAsync("l-owned", Ct), owned);
        (await Store.GetJournalAsync("l-owned", Ct)).ShouldBeEmpty();
        await Store.UpdateAsync(Advance(free), [], Ct);
    }

    [Fact]
    public async Task Lease_FencedWriteByTheOwner_WorksAfterExpiryWhenNobodyClaimed()
    {
        var v1 = NewState("l-late");
        await Store.InsertAsync(v1, [], new LeaseRequest("owner-a", TimeSpan.FromMilliseconds(200)), Ct);
        await Task.Delay(500, Ct);

        var v2 = Advance(v1);
        await Store.UpdateAsync(v2, [Entry(JournalKinds.Resumed)], new Fence("owner-a", 1), Ct);

        ShouldBeSameState(await Store.GetAsync("l-late", Ct), v2);
    }

    [Fact]
    public async Task Lease_TerminalWrite_ReleasesTheLease_NothingClaimsItAfterwards()
    {
        var v1 = NewState("l-done") with { NextWakeAt = null };
        await Store.InsertAsync(v1, [], A, Ct);
        var done = Advance(v1, s => s with { Status = TransactionStatus.Committed });
        await Store.UpdateAsync(done, [Entry(JournalKinds.Committed)], new Fence("owner-a", 1), Ct);

        (await Store.ClaimAsync("l-done", B, takeOver: true, Ct)).ShouldBeNull();
        (await Store.ClaimAsync("l-done", A, takeOver: false, Ct)).ShouldBeNull();
        (await Store.ClaimDueAsync(B, T0.AddDays(1), 10, Ct)).ShouldBeEmpty();
        // Released: the old fence no longer names the holder.
        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(Advance(done), [], new Fence("owner-a", 1), Ct));
        (await Store.RenewAsync(A, [new LeaseClaim("l-done", 1)], Ct)).ShouldBe(["l-done"]);
    }

    [Fact]
    public async Task Lease_InsertOfATerminalStateWithALease_IsNotOwned()
    {
        var finished = NewState("l-born-done") with { Status = TransactionStatus.Aborted, NextWakeAt = null };
        await Store.InsertAsync(finished, [], A, Ct);

        (await Store.ClaimAsync("l-born-done", A, takeOver: true, Ct)).ShouldBeNull();
        (await Store.RenewAsync(A, [new LeaseClaim("l-born-done", 1)], Ct)).ShouldBe(["l-born-done"]);
    }

    [Fact]
    public async Task Lease_TakeOver_ClaimsFromALiveOwner()
    {
        var v1 = NewState("l-take");
        await Store.InsertAsync(v1, [], A, Ct);

        (await Store.ClaimAsync("l-take", B, takeOver: false, Ct)).ShouldBeNull();
        var taken = await Store.ClaimAsync("l-take", B, takeOver: true, Ct);

        taken.ShouldBe(new LeaseClaim("l-take", 2));
        (await Store.ClaimAsync("l-take", A, takeOver: false, Ct)).ShouldBeNull();
        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(Advance(v1), [], new Fence("owner-a", 1), Ct));
    }

    [Fact]
    public async Task Lease_ClaimBySameOwner_ReclaimsAtTheNextEpoch_AndFencesItsOwnOldEpoch()
    {
        var v1 = NewState("l-again");
        await Store.InsertAsync(v1, [], A, Ct);

        var again = await Store.ClaimAsync("l-again", A, takeOver: false, Ct);

        again.ShouldBe(new LeaseClaim("l-again", 2));
        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(Advance(v1), [], new Fence("owner-a", 1), Ct));
        await Store.UpdateAsync(Advance(v1), [], new Fence("owner-a", 2), Ct);
    }

    [Fact]
    public async Task Lease_ClaimOfAnUnknownGid_ReturnsNull()
    {
        (await Store.ClaimAsync("l-nobody", A, takeOver: true, Ct)).ShouldBeNull();
        (await Store.GetAsync("l-nobody", Ct)).ShouldBeNull();
    }

    [Fact]
    public async Task Lease_ClaimDue_RespectsDueByLimitAndOrder_AndSkipsWhatIsHeld()
    {
        await InsertAllAsync(DueFixture());

        // The limit takes the earliest; the order of the answer is not part of the contract.
        (await Store.ClaimDueAsync(A, T0, 2, Ct)).ShouldBe([new LeaseClaim("null-wake", 1), new LeaseClaim("prepared-past", 1)], ignoreOrder: true);
        (await Store.ClaimDueAsync(B, T0, 10, Ct)).ShouldBe([new LeaseClaim("past", 1), new LeaseClaim("exactly-now", 1)], ignoreOrder: true);
        (await Store.ClaimDueAsync(B, T0, 10, Ct)).ShouldBeEmpty();
        (await Store.ClaimDueAsync(B, T0.AddHours(1), 10, Ct)).ShouldBe([new LeaseClaim("future", 1)]);
        // ListDue still lists everything due, held or not: it is the read-only view.
        (await Store.ListDueAsync(T0, 10, Ct)).Count.ShouldBe(4);
    }

    [Fact]
    public async Task Lease_ClaimDue_ConcurrentCallers_NeverGetTheSameRow()
    {
        await InsertAllAsync(Enumerable.Range(0, 200).Select(i => NewState($"sk{i:D3}") with { NextWakeAt = T0.AddMilliseconds(i) }).ToList());
        using var start = new ManualResetEventSlim();

        var workers = Enumerable.Range(0, 8).Select(w => Task.Run(async () =>
        {
            start.Wait(Ct);
            var lease = new LeaseRequest($"worker-{w}", TimeSpan.FromMinutes(1));
            var mine = new List<LeaseClaim>();
            while (true)
            {
                var claims = await Store.ClaimDueAsync(lease, T0.AddDays(1), 7, Ct);
                if (claims.Count == 0)
                {
                    return mine;
                }

                mine.AddRange(claims);
            }
        })).ToList();
        start.Set();
        var all = (await Task.WhenAll(workers)).SelectMany(c => c).ToList();

        all.Select(c => c.Gid).Order(StringComparer.Ordinal).ShouldBe(Enumerable.Range(0, 200).Select(i => $"sk{i:D3}"));
        all.ShouldAllBe(c => c.Epoch == 1);
        (await Store.ClaimDueAsync(A, T0.AddDays(1), 500, Ct)).ShouldBeEmpty();
    }

    [Fact]
    public async Task Lease_Renew_ExtendsPastTheOriginalExpiry_AndReportsWhatWasLost()
    {
        var shortLease = new LeaseRequest("owner-a", TimeSpan.FromMilliseconds(600));
        await Store.InsertAsync(NewState("r-kept"), [], shortLease, Ct);
        await Store.InsertAsync(NewState("r-lapsed"), [], shortLease, Ct);
        await Store.InsertAsync(NewState("r-taken"), [], shortLease, Ct);
        await Store.InsertAsync(NewState("r-done") with { NextWakeAt = null }, [], shortLease, Ct);
        (await Store.ClaimAsync("r-taken", B, takeOver: true, Ct)).ShouldNotBeNull();
        await Store.UpdateAsync(Advance(NewState("r-done") with { NextWakeAt = null }, s => s with { Status = TransactionStatus.Committed }), [], new Fence("owner-a", 1), Ct);

        var lost = await Store.RenewAsync(
            new LeaseRequest("owner-a", TimeSpan.FromSeconds(30)),
            [new LeaseClaim("r-kept", 1), new LeaseClaim("r-taken", 1), new LeaseClaim("r-done", 1), new LeaseClaim("r-ghost", 1)],
            Ct);

        lost.ShouldBe(["r-taken", "r-done", "r-ghost"], ignoreOrder: true);
        await Task.Delay(900, Ct);
        // Past the original expiry: the lapsed one is free, the renewed one is still held.
        (await Store.ClaimAsync("r-lapsed", B, takeOver: false, Ct)).ShouldBe(new LeaseClaim("r-lapsed", 2));
        (await Store.ClaimAsync("r-kept", B, takeOver: false, Ct)).ShouldBeNull();
        (await Store.RenewAsync(A, [], Ct)).ShouldBeEmpty();
        (await Store.RenewAsync(A, [new LeaseClaim("r-kept", 2)], Ct)).ShouldBe(["r-kept"]);
    }

    [Fact]
    public async Task Lease_Release_MakesItClaimableAtOnce_AndIgnoresAStaleEpoch()
    {
        var v1 = NewState("l-release");
        await Store.InsertAsync(v1, [], A, Ct);
        (await Store.ClaimAsync("l-release", A, takeOver: false, Ct)).ShouldBe(new LeaseClaim("l-release", 2));

        await Store.ReleaseAsync("owner-a", [new LeaseClaim("l-release", 1)], Ct);
        (await Store.ClaimAsync("l-release", B, takeOver: false, Ct)).ShouldBeNull();
        await Store.ReleaseAsync("owner-b", [new LeaseClaim("l-release", 2)], Ct);
        (await Store.ClaimAsync("l-release", B, takeOver: false, Ct)).ShouldBeNull();

        await Store.ReleaseAsync("owner-a", [new LeaseClaim("l-release", 2)], Ct);
        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(Advance(v1), [], new Fence("owner-a", 2), Ct));
        (await Store.ClaimAsync("l-release", B, takeOver: false, Ct)).ShouldBe(new LeaseClaim("l-release", 3));
        await Store.ReleaseAsync("owner-b", [], Ct);
    }

    [Fact]
    public async Task Lease_PurgedGid_MayBeInsertedAgain_AtEpochOne()
    {
        var v1 = NewState("l-purged", createdAt: T0.AddDays(-3)) with { UpdatedAt = T0.AddDays(-3), NextWakeAt = null };
        await Store.InsertAsync(v1, [], A, Ct);
        var claim = (await Store.ClaimAsync("l-purged", A, takeOver: false, Ct)).ShouldNotBeNull();
        claim.Epoch.ShouldBe(2);
        await Store.UpdateAsync(Advance(v1, s => s with { Status = TransactionStatus.Committed }), [], A.FenceOf(claim), Ct);
        (await Store.PurgeFinishedAsync(T0, 10, Ct)).ShouldBe(1);

        var again = NewState("l-purged");
        (await Store.InsertAsync(again, [], B, Ct)).ShouldBeNull();

        await Should.ThrowAsync<LeaseLostException>(() => Store.UpdateAsync(Advance(again), [], new Fence("owner-b", 3), Ct));
        await Store.UpdateAsync(Advance(again), [], new Fence("owner-b", 1), Ct);
    }

    // ---- finish notices ----

    [Fact]
    public async Task WhenFinished_CompletesOnATerminalWrite_NotOnANonTerminalOne_NorForAnotherGid()
    {
        var v1 = NewState("f-one");
        await Store.InsertAsync(v1, [], A, Ct);
        await Store.InsertAsync(NewState("f-other"), [], Ct);
        var finished = Store.WhenFinishedAsync("f-one", Ct);
        var other = Store.WhenFinishedAsync("f-other", Ct);

        var v2 = Advance(v1, s => s with { Status = TransactionStatus.Running });
        await Store.UpdateAsync(v2, [], new Fence("owner-a", 1), Ct);
        await Task.Delay(300, Ct);
        finished.IsCompleted.ShouldBeFalse("a non-terminal write is not a finish");

        await Store.UpdateAsync(Advance(v2, s => s with { Status = TransactionStatus.Aborted, NextWakeAt = null }), [], new Fence("owner-a", 1), Ct);

        await finished.WaitAsync(TimeSpan.FromSeconds(10), Ct);
        await Task.Delay(300, Ct);
        other.IsCompleted.ShouldBeFalse("another gid's finish is not this one's");
    }

    [Fact]
    public async Task WhenFinished_CompletesWhenAnotherInstanceOnTheSameDatabaseFinishesIt()
    {
        var other = await OpenAnotherInstanceAsync();
        await other.InitializeAsync(Ct);
        var v1 = NewState("f-remote");
        await other.InsertAsync(v1, [], A, Ct);
        var byUpdate = Store.WhenFinishedAsync("f-remote", Ct);
        var byInsert = Store.WhenFinishedAsync("f-born-done", Ct);

        await other.UpdateAsync(Advance(v1, s => s with { Status = TransactionStatus.Committed, NextWakeAt = null }), [], new Fence("owner-a", 1), Ct);
        await other.InsertAsync(NewState("f-born-done") with { Status = TransactionStatus.Aborted, NextWakeAt = null }, [], Ct);

        await byUpdate.WaitAsync(TimeSpan.FromSeconds(10), Ct);
        await byInsert.WaitAsync(TimeSpan.FromSeconds(10), Ct);
        (await Store.GetAsync("f-remote", Ct)).ShouldNotBeNull().Status.ShouldBe(TransactionStatus.Committed);
    }

    [Fact]
    public async Task WhenFinished_CanceledToken_DropsTheInterest()
    {
        using var cancel = new CancellationTokenSource();
        var waiting = Store.WhenFinishedAsync("f-cancel", cancel.Token);

        await cancel.CancelAsync();

        await Should.ThrowAsync<OperationCanceledException>(() => waiting);
    }

    /// <summary>Claims <paramref name="gid"/> for <paramref name="lease"/> as soon as the store lets it (polling).</summary>
    protected async Task<LeaseClaim> ClaimWhenFreeAsync(string gid, LeaseRequest lease)
    {
        var deadline = DateTimeOffset.UtcNow.AddSeconds(20);
        while (DateTimeOffset.UtcNow < deadline)
        {
            if (await Store.ClaimAsync(gid, lease, takeOver: false, Ct) is { } claim)
            {
                return claim;
            }

            await Task.Delay(50, Ct);
        }

        throw new TimeoutException($"'{gid}' was never free to claim.");
    }

    // ---- helpers ----

    /// <summary>A fresh saga state with two branches, as the engine first inserts it (version 1).</summary>
    protected static TransactionState NewState(string gid, DateTimeOffset? createdAt = null, Protocol protocol = Protocol.Saga) =>
        Machine.Create(NewSpec(gid, protocol), "fp-" + gid, createdAt ?? T0) with { Version = 1 };

    protected static TransactionSpec NewSpec(string gid, Protocol protocol = Protocol.Saga) => new(
        gid,
        protocol,
        """{"orderId":42,"items":[{"sku":"book","qty":2}]}""",
        [Branch("pay", []), Branch("ship", ["pay"])],
        TimeoutMs: 60_000,
        Retry: new RetryPolicy(3, 100, 1_000));

    /// <summary>The next version of <paramref name="state"/>, as one persisted decision makes it.</summary>
    protected static TransactionState Advance(TransactionState state, Func<TransactionState, TransactionState>? change = null) =>
        (change?.Invoke(state) ?? state) with { Version = state.Version + 1, UpdatedAt = state.UpdatedAt.AddSeconds(1) };

    protected static JournalEntry Entry(string kind, string? branch = null, string? op = null, int? attempt = null, string? detail = null) =>
        new(T0, kind, branch, op, attempt, null, detail);

    /// <summary>States compare by their stored JSON: ImmutableArray equality is by reference.</summary>
    protected static void ShouldBeSameState(TransactionState? actual, TransactionState? expected)
    {
        actual.ShouldNotBeNull();
        expected.ShouldNotBeNull();
        Json(actual).ShouldBe(Json(expected));
        actual.Version.ShouldBe(expected.Version);
    }

    /// <summary>Any stuck cause, for states that only need the flag.</summary>
    protected static StuckCause SomeStuckCause { get; } = new("pay", ProtocolNames.Compensate, 5, null, "timeout");

    protected static string Json(TransactionState state) => JsonSerializer.Serialize(state, TreatyJsonContext.Default.TransactionState);

    /// <summary>A state with every optional field set, a non-UTC offset and sub-millisecond times.</summary>
    protected static TransactionState RichState(string gid)
    {
        var created = new DateTimeOffset(2026, 3, 1, 14, 0, 0, TimeSpan.FromHours(2)).AddTicks(1_234_567);
        var state = NewState(gid, createdAt: created);
        var paid = new OpState(ProtocolNames.Action, OpStatus.Succeeded, 2, 0, null, 200, "timeout on the first try",
            created.AddSeconds(1), created.AddSeconds(2), created.AddSeconds(2).AddTicks(3), """{"paymentId":"p-7","note":"ünïcødé ✓"}""");
        var refunding = new OpState(ProtocolNames.Compensate, OpStatus.Waiting, 4, 1, created.AddMinutes(3), 503, "busy",
            created.AddSeconds(5), created.AddSeconds(40), null, null);
        var branches = state.Branches.SetItem(0, state.Branches[0].With(paid).With(refunding));
        return state with
        {
            Status = TransactionStatus.Aborting,
            Phase = ProtocolNames.Compensate,
            Outcome = TransactionOutcome.Abort,
            StuckOn = new StuckCause("pay", ProtocolNames.Compensate, 4, 503, "busy ✓"),
            Reason = "ship failed: \"out of stock\"",
            UpdatedAt = created.AddMinutes(1),
            NextWakeAt = created.AddMinutes(3),
            Branches = branches,
            Version = 7,
        };
    }

    private static BranchSpec Branch(string name, ImmutableArray<string> dependsOn) => new(
        name,
        ImmutableSortedDictionary.CreateRange(StringComparer.Ordinal,
        [
            KeyValuePair.Create(ProtocolNames.Action, $"http://svc/{name}/action"),
            KeyValuePair.Create(ProtocolNames.Compensate, $"http://svc/{name}/compensate"),
        ]),
        dependsOn,
        Pivot: false,
        TimeoutMs: 5_000,
        Retry: null);

    /// <summary>
    /// <paramref name="count"/> states with every status, two protocols, both stuck flags, and
    /// groups of up to three sharing one creation time (so gid breaks ties).
    /// </summary>
    protected static List<TransactionState> Mixed(int count)
    {
        var statuses = Enum.GetValues<TransactionStatus>();
        return Enumerable.Range(0, count).Select(i =>
            NewState($"m{i:D3}", createdAt: T0.AddMinutes(i / 3), protocol: i % 4 == 0 ? Protocol.Tcc : Protocol.Saga) with
            {
                Status = statuses[i % statuses.Length],
                StuckOn = i % 5 == 1 ? SomeStuckCause : null,
            }).ToList();
    }

    /// <summary>Non-terminal ones due at various times, plus terminal and future ones.</summary>
    protected static List<TransactionState> DueFixture() =>
    [
        NewState("past") with { Status = TransactionStatus.Running, NextWakeAt = T0.AddSeconds(-1) },
        NewState("prepared-past") with { Status = TransactionStatus.Prepared, NextWakeAt = T0.AddSeconds(-2) },
        NewState("exactly-now") with { Status = TransactionStatus.Aborting, NextWakeAt = T0 },
        NewState("null-wake") with { Status = TransactionStatus.Running, NextWakeAt = null },
        NewState("future") with { Status = TransactionStatus.Running, NextWakeAt = T0.AddTicks(1) },
        NewState("committed") with { Status = TransactionStatus.Committed, NextWakeAt = null },
        NewState("aborted-past") with { Status = TransactionStatus.Aborted, NextWakeAt = T0.AddSeconds(-5) },
    ];

    /// <summary>Gids of the states matching <paramref name="filter"/> in listing order: newest first, then gid descending.</summary>
    protected static List<string> Expected(IEnumerable<TransactionState> states, Func<TransactionState, bool> filter) =>
        states.Where(filter)
            .OrderByDescending(s => s.CreatedAt.UtcTicks)
            .ThenByDescending(s => s.Gid, StringComparer.Ordinal)
            .Select(s => s.Gid)
            .ToList();

    protected async Task<List<TransactionState>> InsertAllAsync(List<TransactionState> states)
    {
        var results = await Task.WhenAll(states.Select(s => Store.InsertAsync(s, [], Ct)));
        results.ShouldAllBe(r => r == null);
        return states;
    }

    /// <summary>Every page of a listing, following cursors; fails on a loop.</summary>
    protected async Task<List<TransactionPage>> ListPagesAsync(TransactionQuery query)
    {
        var pages = new List<TransactionPage>();
        var cursor = query.Cursor;
        do
        {
            var page = await Store.ListAsync(query with { Cursor = cursor }, Ct);
            pages.Add(page);
            cursor = page.NextCursor;
            pages.Count.ShouldBeLessThan(10_000, "the cursors never ended");
        }
        while (cursor is not null);

        var gids = pages.SelectMany(p => p.Items).Select(s => s.Gid).ToList();
        gids.Distinct(StringComparer.Ordinal).Count().ShouldBe(gids.Count, "an item appeared on two pages");
        return pages;
    }

    protected async Task<List<TransactionState>> ListAllAsync(TransactionQuery query) =>
        (await ListPagesAsync(query)).SelectMany(p => p.Items).ToList();
}
