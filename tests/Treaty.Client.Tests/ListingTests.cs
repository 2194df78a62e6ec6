using Treaty.Testing;
using Treaty.Client.Tests.Support;
using Treaty.Core.Contracts;

namespace Treaty.Client.Tests;

/// <summary>Paging over a coordinator of its own, so the listing holds exactly what these tests submitted.</summary>
public sealed class ListingTests : IAsyncLifetime
{
    private readonly List<string> _gids = [];
    private readonly TreatyFixture _fixture = new();

    private TreatyClient Client => _fixture.Client;

    private TinyParticipant Participant => _fixture.Participant;

    public async Task InitializeAsync()
    {
        await _fixture.InitializeAsync();
        try
        {
            for (var i = 0; i < 5; i++)
            {
                var gid = TreatyFixture.NewGid($"list{i}");
                _gids.Add(gid);
                await Client.Saga(gid).Step("s1", Participant.Ok, Participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));
            }
        }
        catch
        {
            await DisposeAsync(); // xunit does not dispose a test whose InitializeAsync failed
            throw;
        }
    }

    public Task DisposeAsync() => _fixture.DisposeAsync();

    [Fact]
    public async Task ListAsync_WithLimit2_ReturnsTwoItemsAndACursorToTheNextPage()
    {
        var first = await Client.ListAsync(new TransactionListQuery { Limit = 2 });

        first.Items.Count.ShouldBe(2);
        first.NextCursor.ShouldNotBeNullOrEmpty();
        var second = await Client.ListAsync(new TransactionListQuery { Limit = 2, Cursor = first.NextCursor });
        second.Items.Count.ShouldBe(2);
        second.Items.Select(i => i.Gid).ShouldNotContain(g => first.Items.Any(f => f.Gid == g));
    }

    [Fact]
    public async Task ListAllAsync_WithLimit2OverFiveTransactions_YieldsEachOnce()
    {
        var seen = new List<TransactionSummaryView>();
        await foreach (var item in Client.ListAllAsync(new TransactionListQuery { Limit = 2 }))
        {
            seen.Add(item);
        }

        seen.Select(i => i.Gid).ShouldBe(Enumerable.Reverse(_gids)); // newest first, each once
        seen.ShouldAllBe(i => i.Protocol == "saga" && i.Status == "committed" && i.Branches == 1);
    }

    [Fact]
    public async Task ListAllAsync_WithStatusFilter_YieldsOnlyMatches()
    {
        var aborted = TreatyFixture.NewGid("list-aborted");
        await Client.Saga(aborted).Step("s1", Participant.Conflict, Participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));

        var seen = new List<string>();
        await foreach (var item in Client.ListAllAsync(new TransactionListQuery { Status = "aborted", Limit = 2 }))
        {
            seen.Add(item.Gid);
        }

        seen.ShouldBe([aborted]);
    }

    [Fact]
    public async Task ListAsync_GidAndUntil_NarrowTheListing()
    {
        var third = await Client.GetAsync(_gids[2]);

        var byGid = await Client.ListAsync(new TransactionListQuery { GidContains = _gids[3] });
        var before = await Client.ListAsync(new TransactionListQuery { Until = third!.CreatedAt });

        byGid.Items.Select(i => i.Gid).ShouldBe([_gids[3]]);
        before.Items.Select(i => i.Gid).ShouldBe([_gids[1], _gids[0]]);
    }

    [Fact]
    public async Task CountAsync_ByStatus_IgnoresTheStatusFilter()
    {
        var aborted = TreatyFixture.NewGid("count-aborted");
        await Client.Saga(aborted).Step("s1", Participant.Conflict, Participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));

        var counts = await Client.CountAsync(new TransactionListQuery { Status = "committed", Protocol = "saga" });

        counts.ByStatus["committed"].ShouldBe(5);
        counts.ByStatus["aborted"].ShouldBe(1);
        counts.Total.ShouldBe(6);
        counts.Stuck.ShouldBe(0);
    }

    [Fact]
    public async Task ListAllAsync_CancelledToken_ThrowsOperationCanceled()
    {
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in Client.ListAllAsync(new TransactionListQuery { Limit = 2 }, cancelled.Token))
            {
            }
        });
    }
}
