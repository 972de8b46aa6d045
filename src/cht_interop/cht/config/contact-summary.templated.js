// Minimal contact summary: cht-conf requires one; the LTFU workflow adds no fields or cards.
module.exports = {
  fields: [],
  cards: [],
  context: {},
};
