//! How one trade moves money, as a pure function: the buyer's held quote pays the seller,
//! the seller's held base goes to the buyer, each side pays its fee (maker or taker rate) out
//! of what it receives, and a limit buy filled below its limit gets the unneeded part of its
//! hold back at once, so that a resting buy always holds exactly `limit × remaining`.

use agora_engine::{BookSpec, Side};
use agora_ledger::{Account, Bucket, Entry, EntryKind, LedgerError, Posting};
use agora_store::{OrderRow, OrderType, SymbolRow};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TradeSettlement {
    pub entry: Entry,
    pub notional: i64,
    /// Base units the buyer pays in fees.
    pub buyer_fee: i64,
    /// Quote units the seller pays in fees.
    pub seller_fee: i64,
    /// The buyer's hold after the trade (excess released).
    pub buyer_held_after: i64,
    pub seller_held_after: i64,
}

pub fn fee(amount: i64, bps: u32) -> i64 {
    (amount as i128 * bps as i128 / 10_000) as i64
}

/// Settles `qty` at `price` between `buy` and `sell`; `taker_side` says who was the taker.
pub fn settle_trade(
    symbol: &SymbolRow,
    spec: BookSpec,
    price: i64,
    qty: i64,
    buy: &OrderRow,
    sell: &OrderRow,
    taker_side: Side,
) -> Result<TradeSettlement, LedgerError> {
    assert_eq!(buy.side, Side::Buy);
    assert_eq!(sell.side, Side::Sell);
    let notional = spec.notional(price, qty);
    let rate = |side: Side| {
        if side == taker_side {
            symbol.taker_fee_bps
        } else {
            symbol.maker_fee_bps
        }
    };
    let buyer_fee = fee(qty, rate(Side::Buy));
    let seller_fee = fee(notional, rate(Side::Sell));

    let buyer_held_after = buy.held - notional;
    // A limit buy needs to keep only limit × remaining; the rest goes back now.
    let buyer_release = match (buy.order_type, buy.price, buy.quantity) {
        (OrderType::Limit, Some(limit), Some(quantity)) => {
            let remaining = quantity - buy.filled_qty - qty;
            buyer_held_after - spec.notional(limit, remaining)
        }
        _ => 0,
    };
    let seller_held_after = sell.held - qty;
    assert!(
        buyer_held_after >= 0 && buyer_release >= 0 && seller_held_after >= 0,
        "trade exceeds holds: buy {buy:?} sell {sell:?} price {price} qty {qty}"
    );
    let user = |user, bucket| Account::User { user, bucket };
    let (base, quote) = (symbol.base_asset, symbol.quote_asset);
    let p = |account, asset, amount| Posting {
        account,
        asset,
        amount,
    };
    let entry = Entry::new(
        EntryKind::Trade,
        vec![
            p(user(buy.user, Bucket::Held), quote, -notional),
            p(
                user(sell.user, Bucket::Available),
                quote,
                notional - seller_fee,
            ),
            p(Account::Fees, quote, seller_fee),
            p(user(sell.user, Bucket::Held), base, -qty),
            p(user(buy.user, Bucket::Available), base, qty - buyer_fee),
            p(Account::Fees, base, buyer_fee),
            p(user(buy.user, Bucket::Held), quote, -buyer_release),
            p(user(buy.user, Bucket::Available), quote, buyer_release),
        ],
    )?;
    Ok(TradeSettlement {
        entry,
        notional,
        buyer_fee,
        seller_fee,
        buyer_held_after: buyer_held_after - buyer_release,
        seller_held_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbol() -> SymbolRow {
        SymbolRow {
            maker_fee_bps: 10,
            taker_fee_bps: 20,
            ..crate::test_rows::symbol("X", 1)
        }
    }

    fn order(side: Side, user: u64, price: i64, qty: i64, held: i64) -> OrderRow {
        OrderRow {
            held,
            accept_seq: 1,
            ..crate::test_rows::limit_order(user, user, side, price, qty)
        }
    }

    #[test]
    fn buyer_below_limit_gets_excess_back_and_fees_go_to_the_venue() {
        let spec = BookSpec {
            base_unit: 100,
            lot_size: 1,
        };
        // Buy 1000 base minor (10 whole) at limit 200 → holds 2000; fills 400 at 150 → 600.
        let buy = order(Side::Buy, 7, 200, 1000, 2000);
        let sell = order(Side::Sell, 8, 150, 400, 400);
        let s = settle_trade(&symbol(), spec, 150, 400, &buy, &sell, Side::Buy).unwrap();
        assert_eq!(s.notional, 600);
        assert_eq!(s.buyer_fee, 0); // 400 * 20bps = 0.8 → 0 (floor)
        assert_eq!(s.seller_fee, 0); // 600 * 10bps = 0.6 → 0
                                     // Remaining 600 at limit 200 needs 1200; 2000 - 600 paid = 1400 → 200 released.
        assert_eq!(s.buyer_held_after, 1200);
        assert_eq!(s.seller_held_after, 0);
        // With the seller as taker: 600 * 20 bps = 1.2 → 1 quote fee; the buyer's 0 base fee
        // posting is dropped, the release stays.
        let s = settle_trade(&symbol(), spec, 150, 400, &buy, &sell, Side::Sell).unwrap();
        assert_eq!((s.buyer_fee, s.seller_fee), (0, 1));
        assert_eq!(s.entry.postings.len(), 7);
    }

    #[test]
    fn fees_are_taken_from_what_each_side_receives() {
        let spec = BookSpec {
            base_unit: 1,
            lot_size: 1,
        };
        let buy = order(Side::Buy, 7, 100, 1000, 100_000);
        let sell = order(Side::Sell, 8, 100, 1000, 1000);
        let s = settle_trade(&symbol(), spec, 100, 1000, &buy, &sell, Side::Sell).unwrap();
        assert_eq!(s.buyer_fee, 1); // maker: 1000 * 10bps
        assert_eq!(s.seller_fee, 200); // taker: 100000 * 20bps
    }
}
