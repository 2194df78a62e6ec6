using Microsoft.AspNetCore.Builder;
using Shop.Infrastructure;
using Treaty.AspNetCore.Barrier;

namespace Shop.Inventory;

/// <summary>
/// The Inventory service's part in every protocol. Three effects on the stock do all the work
/// (<see cref="Stock"/>): <b>hold</b> (available → held), <b>sell</b> (held → sold) and
/// <b>release</b> (held → available). Each protocol only says when they happen. Every endpoint
/// runs behind the participant kit's barrier (<c>MapBranch</c>): a duplicate call is replayed, an
/// undo whose hold never happened is answered for us, a hold that arrives after its undo is refused.
/// </summary>
internal static class InventoryEndpoints
{
    public static void Map(WebApplication app, Stock stock)
    {
        // Saga: the hold is visible at once; after the order is confirmed (the pivot) it is sold.
        app.MapBranch("/saga/inventory/reserve", (ctx, ct) => stock.HoldAsync(ctx, lockRows: false, ct));
        app.MapBranch("/saga/inventory/release", stock.ReleaseAsync);
        app.MapBranch("/saga/inventory/commit", stock.SellAsync);

        // TCC: try holds the quantity (others may still buy what is left), confirm sells it, cancel releases it.
        app.MapBranch("/tcc/inventory/{op}", (ctx, ct) => ctx.Op switch
        {
            "try" => stock.HoldAsync(ctx, lockRows: false, ct),
            "confirm" => stock.SellAsync(ctx, ct),
            "cancel" => stock.ReleaseAsync(ctx, ct),
            _ => Branches.UnexpectedOp(ctx),
        });

        // 2PC: prepare is the vote; a YES holds the quantity and locks the stock rows until the
        // outcome (another transaction that needs them is refused meanwhile). One pattern for
        // every op, so the kit's in-doubt resolver can run the outcome with this handler.
        app.MapBranch("/2pc/inventory/{op}", (ctx, ct) => ctx.Op switch
        {
            "prepare" => stock.HoldAsync(ctx, lockRows: true, ct),
            "commit" => stock.SellAsync(ctx, ct),
            "rollback" => stock.ReleaseAsync(ctx, ct),
            _ => Branches.UnexpectedOp(ctx),
        });

        // 3PC: canCommit votes and holds like 2PC's prepare; preCommit only acknowledges (the kit
        // records the stage, which its termination rule reads when the coordinator goes silent).
        app.MapBranch("/3pc/inventory/{op}", (ctx, ct) => ctx.Op switch
        {
            "canCommit" => stock.HoldAsync(ctx, lockRows: true, ct),
            "preCommit" => Branches.Acknowledge(ctx),
            "doCommit" => stock.SellAsync(ctx, ct),
            "abort" => stock.ReleaseAsync(ctx, ct),
            _ => Branches.UnexpectedOp(ctx),
        });
    }
}
